"""Egress proxy: upstreams and token endpoints through a real forward proxy (tinyproxy).

What a user behind a corporate proxy notices: HTTPS to the provider goes through a
CONNECT tunnel with TLS to the provider inside it (its certificate verified, SNI
its name), plain HTTP through a tunnel too, so that the bytes are those of a direct
connection; proxy credentials come from ``${file:}``; a refused CONNECT or a dead
proxy is a clear 502 that names the proxy and never its credentials; ``no_proxy``
bypasses it; the environment is ignored unless ``egress_proxy: env``. Each test
counts what the provider fake saw and what the proxy's own log received.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from tests.conftest import Echo, serve_app
from tests.fakes import GetPaid, serve
from tests.fakes.base import close_runner
from tests.fakes.getpaid import LIVE_AUDIENCE
from tests.forward_proxy import forward_proxy_fixture  # noqa: F401

PASSWORD = "pr0xy-Pa55-Zq9"


class Tls:
    """A CA and a certificate for localhost, as trustme files."""

    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("localhost")
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self, seen_sni: list[str | None]) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)

        def sni(_sock: Any, name: str | None, _ctx: Any) -> None:
            seen_sni.append(name)

        ctx.sni_callback = sni
        return ctx


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    return Tls(tmp_path)


class Upstream:
    """A recording upstream (plain or TLS): path, headers and body of each request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.sni: list[str | None] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.raw_path, dict(request.headers), body))
        return web.json_response({"path": request.raw_path, "length": len(body)})


@pytest.fixture
async def upstream_factory():
    runners: list[web.AppRunner] = []

    async def make(ssl_context_for: Any = None) -> Upstream:
        up = Upstream()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", up.handle)
        ctx = ssl_context_for(up.sni) if ssl_context_for is not None else None
        runner, port = await serve_app(app, ctx)
        runners.append(runner)
        up.url = f"{'https' if ctx else 'http'}://localhost:{port}"
        return up

    yield make
    for runner in runners:
        await close_runner(runner)  # its TLS closes come late through the forward proxy


def static_route(upstream: str, egress: str, extra: str = "") -> str:
    return f"""
routes:
  api:
    prefix: /api/
    upstream: {upstream}/v1/
    auth: {{type: static, value: Bearer up-key-123}}
    egress_proxy: {egress}
{extra}
"""


def getpaid_route(url: str, egress: str, extra: str = "") -> str:
    return f"""
routes:
  getpaid:
    prefix: /getpaid/
    upstream: {url}/
    auth:
      type: oauth2_client_credentials
      token_url: {url}/oauth/token
      client_id: gid
      client_secret: gsecret
      audience: {LIVE_AUDIENCE}
      body: json
    egress_proxy: {egress}
{extra}
"""


async def call(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
    async with http.request(kw.pop("method", "GET"), url, **kw) as resp:
        raw = await resp.read()
        return resp.status, dict(resp.headers), json.loads(raw) if raw else None


def free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there now: connecting is refused at once


def secret_file(tmp_path: Path, value: str) -> Path:
    path = tmp_path / "proxy-password"
    path.write_text(value + "\n")
    return path


# -- through the tunnel -------------------------------------------------------------------


async def test_https_upstream_through_connect_tunnel(
    tls, upstream_factory, forward_proxy, start_proxy, http
):
    fp = forward_proxy()
    up = await upstream_factory(tls.server_context)
    port = up.url.rsplit(":", 1)[1]
    proxy = await start_proxy(
        static_route(up.url, f"http://{fp.address}", f"    tls: {{ca_file: {tls.ca_file}}}")
    )
    for i in range(3):
        status, _, body = await call(http, f"{proxy.url}/api/items/{i}?q=1", data=b"abc")
        assert status == 200, body
        assert body == {"path": f"/v1/items/{i}?q=1", "length": 3}
    # the provider saw the requests as authproxy framed them, token injected
    assert [s[1] for s in up.seen] == ["/v1/items/0?q=1", "/v1/items/1?q=1", "/v1/items/2?q=1"]
    assert all(s[2]["Authorization"] == "Bearer up-key-123" for s in up.seen)
    assert up.seen[0][2]["Host"] == f"localhost:{port}"
    # TLS inside the tunnel was with the provider, by its name; one tunnel, kept alive
    assert up.sni == ["localhost"]
    assert await fp.wait_connects(1) == [f"localhost:{port}"]
    assert all(r.startswith("CONNECT ") for r in fp.requests())


async def test_tls_inside_the_tunnel_is_verified(
    tls, upstream_factory, forward_proxy, start_proxy, http
):
    fp = forward_proxy()
    up = await upstream_factory(tls.server_context)
    proxy = await start_proxy(static_route(up.url, f"http://{fp.address}"))  # CA not trusted
    status, headers, body = await call(http, f"{proxy.url}/api/x")
    assert (status, headers["X-Authproxy-Error"]) == (502, "upstream_unavailable")
    assert "CERTIFICATE_VERIFY_FAILED" in body["error"]["message"]
    assert up.seen == []
    assert len(await fp.wait_connects(1)) == 1  # the tunnel was made; TLS in it refused


async def test_plain_http_upstream_goes_through_connect_too(
    echo: Echo, forward_proxy, start_proxy, http
):
    fp = forward_proxy()
    proxy = await start_proxy(static_route(echo.url, f"http://{fp.address}"))
    status, _, body = await call(http, f"{proxy.url}/api/p", method="POST", data=b"x" * 1000)
    assert status == 200 and body["length"] == 1000
    assert echo.last.raw_path == "/v1/p"  # origin-form, as on a direct connection
    assert echo.last.header("authorization") == "Bearer up-key-123"
    assert "proxy-authorization" not in echo.last.headers
    target = echo.url.removeprefix("http://")
    assert await fp.wait_connects(1) == [target]
    assert fp.requests() == [f"CONNECT {target} HTTP/1.1"]  # never an absolute-form request


async def test_token_endpoint_and_upstream_through_the_tunnel(
    tls, forward_proxy, start_proxy, http
):
    fp = forward_proxy()
    provider = GetPaid("gid", "gsecret")
    seen_sni: list[str | None] = []
    async with serve(provider, ssl_context=tls.server_context(seen_sni)) as url:
        url = url.replace("127.0.0.1", "localhost")
        proxy = await start_proxy(
            getpaid_route(url, f"http://{fp.address}", f"    tls: {{ca_file: {tls.ca_file}}}")
        )
        status, _, body = await call(http, f"{proxy.url}/getpaid/invoices")
        assert status == 200, body
        assert body["path"] == "/invoices"
        assert provider.logins == 1 and provider.api_requests == 1
        target = url.removeprefix("https://")
        # one tunnel for the token request (its own connection), one for the API
        assert await fp.wait_connects(2) == [target, target]
        assert seen_sni == ["localhost", "localhost"]


# -- proxy credentials ---------------------------------------------------------------------


async def test_basic_proxy_auth_with_password_from_file(
    tmp_path, echo: Echo, forward_proxy, start_proxy, http, caplog
):
    fp = forward_proxy(user="alice", password=PASSWORD)
    pw = secret_file(tmp_path, PASSWORD)
    caplog.set_level(logging.DEBUG)
    proxy = await start_proxy(static_route(echo.url, f'"http://alice:${{file:{pw}}}@{fp.address}"'))
    status, _, body = await call(http, f"{proxy.url}/api/ok")
    assert status == 200, body
    assert echo.last.raw_path == "/v1/ok"
    assert "proxy-authorization" not in echo.last.headers  # for the proxy, not the provider
    assert len(await fp.wait_connects(1)) == 1
    assert_no_secret(caplog.text, PASSWORD)


async def test_mapping_form_password_needs_no_encoding(
    tmp_path, echo: Echo, forward_proxy, start_proxy, http
):
    fp = forward_proxy(user="alice", password=PASSWORD)
    pw = secret_file(tmp_path, PASSWORD)
    egress = f'{{url: "http://{fp.address}", username: alice, password: "${{file:{pw}}}"}}'
    proxy = await start_proxy(static_route(echo.url, egress))
    status, _, _ = await call(http, f"{proxy.url}/api/ok")
    assert status == 200
    assert len(await fp.wait_connects(1)) == 1


def assert_no_secret(text: str, password: str) -> None:
    assert password not in text
    for user in ("alice", "bob"):
        assert base64.b64encode(f"{user}:{password}".encode()).decode() not in text


# tinyproxy answers 407 to a CONNECT without credentials, 401 to wrong ones
@pytest.mark.parametrize(
    ("credentials", "answer"), [("", 407), ("bob:wrong-Pa55-Xy7@", 401)], ids=["none", "wrong"]
)
async def test_407_is_a_502_naming_the_proxy_never_the_credentials(
    credentials, answer, echo: Echo, forward_proxy, start_proxy, http, caplog
):
    fp = forward_proxy(user="alice", password=PASSWORD)
    caplog.set_level(logging.DEBUG)
    proxy = await start_proxy(static_route(echo.url, f"http://{credentials}{fp.address}"))
    status, headers, body = await call(http, f"{proxy.url}/api/x")
    assert (status, headers["X-Authproxy-Error"]) == (502, "upstream_unavailable")
    message = body["error"]["message"]
    assert f"egress proxy {fp.address} refused CONNECT" in message and f": {answer}" in message
    assert echo.seen == []
    assert_no_secret(json.dumps(body) + caplog.text, "wrong-Pa55-Xy7")
    assert "bob" not in message


def assert_token_error(status: int, headers: dict[str, str]) -> None:
    # The route fetches its first token at start: by the first request that attempt may
    # have failed already, and the contract then says 503 token_backoff (Retry-After).
    assert (status, headers["X-Authproxy-Error"]) in (
        (502, "token_unavailable"),
        (503, "token_backoff"),
    )


async def test_407_on_the_token_path_is_token_unavailable(forward_proxy, start_proxy, http):
    fp = forward_proxy(user="alice", password=PASSWORD)
    provider = GetPaid("gid", "gsecret")
    async with serve(provider) as url:
        proxy = await start_proxy(getpaid_route(url, f"http://{fp.address}"))
        status, headers, body = await call(http, f"{proxy.url}/getpaid/invoices")
        assert_token_error(status, headers)
        assert fp.address in body["error"]["message"] and "407" in body["error"]["message"]
        assert provider.token_requests == 0 and provider.api_requests == 0


async def test_proxy_refusing_the_port_is_a_502_with_its_status(
    echo: Echo, forward_proxy, start_proxy, http
):
    fp = forward_proxy(connect_ports=[443])  # tinyproxy answers 403 to other ports
    proxy = await start_proxy(static_route(echo.url, f"http://{fp.address}"))
    status, headers, body = await call(http, f"{proxy.url}/api/x")
    assert (status, headers["X-Authproxy-Error"]) == (502, "upstream_unavailable")
    assert f"egress proxy {fp.address} refused CONNECT" in body["error"]["message"]
    assert ": 403" in body["error"]["message"]
    assert echo.seen == []


async def test_proxy_that_cannot_reach_the_upstream_is_a_502(forward_proxy, start_proxy, http):
    fp = forward_proxy()
    dead = free_closed_port()
    proxy = await start_proxy(static_route(f"http://127.0.0.1:{dead}", f"http://{fp.address}"))
    status, headers, body = await call(http, f"{proxy.url}/api/x")
    assert (status, headers["X-Authproxy-Error"]) == (502, "upstream_unavailable")
    # tinyproxy says 500 "Unable to connect"; squid would say 503
    assert (
        f"egress proxy {fp.address} refused CONNECT to 127.0.0.1:{dead}: 5"
        in (body["error"]["message"])
    )


async def test_proxy_down_is_a_quick_502_on_both_paths(echo: Echo, start_proxy, http):
    dead = free_closed_port()
    provider = GetPaid("gid", "gsecret")
    async with serve(provider) as url:
        proxy = await start_proxy(
            static_route(echo.url, f"http://127.0.0.1:{dead}")
            + getpaid_route(url, f"http://127.0.0.1:{dead}").replace("routes:\n", "")
        )
        started = time.monotonic()
        status, headers, body = await call(http, f"{proxy.url}/api/x")
        assert time.monotonic() - started < 2.0
        assert (status, headers["X-Authproxy-Error"]) == (502, "upstream_unavailable")
        assert body["error"]["message"] == (
            f"cannot connect to egress proxy 127.0.0.1:{dead} (Connection refused)"
        )
        status, headers, body = await call(http, f"{proxy.url}/getpaid/invoices")
        assert_token_error(status, headers)
        assert f"egress proxy 127.0.0.1:{dead}" in body["error"]["message"]
        assert echo.seen == [] and provider.token_requests == 0


# -- no_proxy and the environment -----------------------------------------------------------


async def test_no_proxy_bypasses_the_proxy_per_host(forward_proxy, start_proxy, http):
    fp = forward_proxy()
    provider = GetPaid("gid", "gsecret")
    async with serve(provider) as url:
        # the token endpoint by name (bypassed), the API by address (through the proxy)
        token_url = url.replace("127.0.0.1", "localhost")
        doc = getpaid_route(url, f"{{url: 'http://{fp.address}', no_proxy: [.localhost]}}")
        doc = doc.replace(f"token_url: {url}/", f"token_url: {token_url}/")
        proxy = await start_proxy(doc)
        status, _, body = await call(http, f"{proxy.url}/getpaid/invoices")
        assert status == 200, body
        assert provider.logins == 1 and provider.api_requests == 1
        assert await fp.wait_connects(1) == [url.removeprefix("http://")]


async def test_no_proxy_star_sends_everything_direct(echo: Echo, forward_proxy, start_proxy, http):
    fp = forward_proxy()
    proxy = await start_proxy(
        static_route(echo.url, f"{{url: 'http://{fp.address}', no_proxy: '*'}}")
    )
    assert (await call(http, f"{proxy.url}/api/x"))[0] == 200
    assert len(echo.seen) == 1 and fp.requests() == []


async def test_environment_is_ignored_unless_allowed(
    echo: Echo, forward_proxy, start_proxy, http, monkeypatch
):
    fp = forward_proxy()
    env = {"HTTP_PROXY": f"http://{fp.address}", "https_proxy": f"http://{fp.address}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    route = f"""
routes:
  direct:
    upstream: {echo.url}/
    auth: {{type: none}}
  viaenv:
    upstream: {echo.url}/
    auth: {{type: none}}
    egress_proxy: env
"""
    proxy = await start_proxy(route, env=env)
    assert (await call(http, f"{proxy.url}/direct/x"))[0] == 200
    assert fp.requests() == []  # set in the environment, and still not used
    assert (await call(http, f"{proxy.url}/viaenv/y"))[0] == 200
    assert await fp.wait_connects(1) == [echo.url.removeprefix("http://")]
    assert [s.raw_path for s in echo.seen] == ["/x", "/y"]


async def test_env_no_proxy_is_honoured(echo: Echo, forward_proxy, start_proxy, http):
    fp = forward_proxy()
    env = {"http_proxy": f"{fp.address}", "no_proxy": "example.com, 127.0.0.0/8"}
    route = f"routes:\n  r:\n    upstream: {echo.url}/\n    auth: {{type: none}}\n"
    proxy = await start_proxy("defaults: {egress_proxy: env}\n" + route, env=env)
    assert (await call(http, f"{proxy.url}/r/x"))[0] == 200
    assert len(echo.seen) == 1 and fp.requests() == []
