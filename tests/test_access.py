"""Inbound access control: who may use the proxy (and so the providers' credentials).

The proxy runs for real on a real port (or unix socket); clients are real
aiohttp clients, some bound to a second loopback address (127.0.0.2) so that
``allow_from`` sees a different source. Every refused request is checked at the
recording upstream: nothing may have been forwarded.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest

from proxy import config as configmod

TOKEN = "s3cret-inbound-token-0123456789"


def route(echo_url: str) -> str:
    return textwrap.dedent(f"""
    routes:
      api:
        prefix: /api/
        upstream: {echo_url}/v1/
        auth: {{type: none}}
    """)


async def get(url: str, *, local: str | None = None, headers: dict[str, str] | None = None):
    connector = aiohttp.TCPConnector(local_addr=(local, 0) if local else None)
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.get(url, headers=headers or {}) as resp:
            return resp.status, dict(resp.headers), await resp.read()


def assert_forbidden(status: int, headers: dict[str, str], body: bytes) -> dict[str, str]:
    assert status == 403
    assert headers["X-Authproxy-Error"] == "forbidden"
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "forbidden"
    return error


# -- allow_from ---------------------------------------------------------------------


async def test_client_outside_allow_from_is_refused_and_nothing_forwarded(echo, start_proxy):
    proxy = await start_proxy("allow_from: [127.0.0.1/32]\n" + route(echo.url))

    status, headers, body = await get(f"{proxy.url}/api/x", local="127.0.0.2")
    assert_forbidden(status, headers, body)
    # an unknown path is refused the same way: an outsider learns nothing about routes
    status, headers, body = await get(f"{proxy.url}/nope/x", local="127.0.0.2")
    assert_forbidden(status, headers, body)
    assert echo.seen == []

    status, _, body = await get(f"{proxy.url}/api/x", local="127.0.0.1")
    assert status == 200
    assert json.loads(body)["path"] == "/v1/x"
    assert len(echo.seen) == 1


async def test_allow_from_accepts_any_listed_network(echo, start_proxy):
    proxy = await start_proxy("allow_from: [10.0.0.0/8, 127.0.0.2/32]\n" + route(echo.url))
    status, _, _ = await get(f"{proxy.url}/api/x", local="127.0.0.2")
    assert status == 200
    status, headers, body = await get(f"{proxy.url}/api/x", local="127.0.0.3")
    assert_forbidden(status, headers, body)
    assert len(echo.seen) == 1


# -- inbound_token ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [None, "", "wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "\u00e9" + TOKEN[1:]],
    ids=["missing", "empty", "wrong", "prefix", "longer", "case", "non-ascii"],
)
async def test_missing_or_wrong_inbound_token_is_refused(echo, start_proxy, sent, caplog):
    proxy = await start_proxy(
        "inbound_token: ${env:INBOUND}\n" + route(echo.url), env={"INBOUND": TOKEN}
    )
    headers = {} if sent is None else {"X-Authproxy-Token": sent}
    status, resp_headers, body = await get(f"{proxy.url}/api/x", headers=headers)
    error = assert_forbidden(status, resp_headers, body)
    assert "X-Authproxy-Token" in error["message"]
    assert TOKEN.encode() not in body
    assert echo.seen == []
    assert TOKEN not in caplog.text


async def test_inbound_token_admits_and_is_never_forwarded(echo, start_proxy, caplog):
    proxy = await start_proxy(
        "inbound_token: ${env:INBOUND}\n" + route(echo.url), env={"INBOUND": TOKEN}
    )
    for name in ("X-Authproxy-Token", "x-authproxy-token"):
        status, _, _ = await get(f"{proxy.url}/api/x", headers={name: TOKEN})
        assert status == 200
    assert len(echo.seen) == 2
    for seen in echo.seen:
        assert "x-authproxy-token" not in seen.headers
        assert all(TOKEN not in v for vs in seen.headers.values() for v in vs)
    assert TOKEN not in caplog.text


async def test_allow_from_and_inbound_token_are_both_required(echo, start_proxy):
    proxy = await start_proxy(
        "allow_from: [127.0.0.1/32]\ninbound_token: ${env:INBOUND}\n" + route(echo.url),
        env={"INBOUND": TOKEN},
    )
    ok = {"X-Authproxy-Token": TOKEN}
    assert (await get(f"{proxy.url}/api/x", local="127.0.0.2", headers=ok))[0] == 403
    assert (await get(f"{proxy.url}/api/x", local="127.0.0.1"))[0] == 403
    assert echo.seen == []
    assert (await get(f"{proxy.url}/api/x", local="127.0.0.1", headers=ok))[0] == 200
    assert len(echo.seen) == 1


def test_inbound_token_too_short_is_a_config_error():
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse("inbound_token: short\n" + route("http://127.0.0.1:1"), {})
    assert [p.path for p in err.value.problems] == ["inbound_token"]
    assert "short" not in str(err.value).replace("too short", "")


# -- unix socket -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [None, "0600"])
async def test_unix_socket_mode_and_requests_over_it(echo, start_proxy, tmp_path, mode):
    sock = tmp_path / "authproxy.sock"
    extra = f"unix_socket_mode: {mode}\n" if mode else ""
    proxy = await start_proxy(
        f"listen: unix:{sock}\nadmin_listen: 127.0.0.1:0\n{extra}" + route(echo.url)
    )
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == (0o600 if mode else 0o660)
    assert str(proxy.proxy_address) == f"unix:{sock}"

    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
        async with s.post("http://authproxy/api/items?a=1", data=b"hello") as resp:
            assert resp.status == 200
            answer = await resp.json()
    assert answer["path"] == "/v1/items?a=1"
    assert echo.last.body == b"hello"


async def test_unix_socket_counts_as_loopback_for_allow_from(echo, start_proxy, tmp_path):
    sock = tmp_path / "p.sock"
    await start_proxy(
        f"listen: unix:{sock}\nadmin_listen: 127.0.0.1:0\nallow_from: [10.0.0.0/8]\n"
        + route(echo.url)
    )
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s:
        async with s.get("http://authproxy/api/x") as resp:
            assert resp.status == 200
    assert len(echo.seen) == 1


# -- refusing to start beyond loopback ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, cwd: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:{port}", ":{port}", "[::]:{port}"])
def test_listening_beyond_loopback_without_protection_is_refused(tmp_path, listen):
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"listen: '{listen.format(port=port)}'\nadmin_listen: 127.0.0.1:0\n"
        + route("http://127.0.0.1:1")
    )
    check = run_cli("check", "-c", str(cfg), cwd=tmp_path)
    assert check.returncode == 2
    assert "listen" in check.stderr
    assert "allow_from" in check.stderr and "insecure_allow_any" in check.stderr
    assert "Traceback" not in check.stderr

    serve = run_cli("serve", "-c", str(cfg), cwd=tmp_path)
    assert serve.returncode == 2
    assert "listen" in serve.stderr
    assert "Traceback" not in serve.stderr
    # nothing was bound: the port is still free
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))


@pytest.mark.parametrize(
    "guard",
    ["allow_from: [10.0.0.0/8]", f"inbound_token: {TOKEN}", "insecure_allow_any: true"],
)
def test_listening_beyond_loopback_with_a_guard_is_accepted(guard):
    cfg = configmod.parse(f"listen: 0.0.0.0:8080\n{guard}\n" + route("http://127.0.0.1:1"), {})
    assert not cfg.listen.is_loopback


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:8080", "127.1.2.3:8080", "[::1]:8080", "localhost:8080", "unix:/x.sock"]
)
def test_loopback_needs_no_guard(listen):
    cfg = configmod.parse(f"listen: '{listen}'\n" + route("http://127.0.0.1:1"), {})
    assert cfg.listen.is_loopback


def test_insecure_allow_any_false_does_not_count():
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse(
            "listen: 0.0.0.0:8080\ninsecure_allow_any: false\n" + route("http://127.0.0.1:1"), {}
        )
    problem = err.value.problems[0]
    assert problem.path == "listen" and problem.line == 1


# -- not an open proxy -------------------------------------------------------------------


async def test_connect_and_absolute_form_are_refused(echo, start_proxy):
    proxy = await start_proxy(route(echo.url))
    host, port = proxy.url.removeprefix("http://").split(":")
    for target in (b"CONNECT example.com:443 HTTP/1.1", b"GET http://example.com/api/x HTTP/1.1"):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(target + b"\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] in (b"400", b"405")
        assert b"X-Authproxy-Error: " in head
        assert json.loads(body)["error"]["code"] in ("bad_request", "method_not_allowed")
    assert echo.seen == []


async def test_client_credentials_never_reach_the_upstream_whatever_their_case(echo, start_proxy):
    proxy = await start_proxy(
        route(echo.url).replace("{type: none}", "{type: static, value: Bearer upstream-key}")
    )
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /api/x HTTP/1.1\r\nhost: evil.example\r\nauthorization: Bearer client-own\r\n"
        b"x-authproxy-token: whatever\r\nconnection: close, x-hop\r\nx-hop: 1\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    seen = echo.last.headers
    assert seen["authorization"] == ["Bearer upstream-key"]
    assert seen["host"] == [echo.url.removeprefix("http://")]
    assert "x-authproxy-token" not in seen and "x-hop" not in seen
