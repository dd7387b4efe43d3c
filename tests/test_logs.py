"""Logs: JSON lines, the access log, token events, X-Request-Id, and no secret ever.

The leak tests turn on DEBUG for the whole process (root, aiohttp, asyncio),
run every kind of flow against the strict fakes (invoice_ng with a refresh, b2b
with a rotating refresh token, getpaid, a static key, a 401 replay, a failing
token endpoint) with query strings and client credentials in the requests, and
grep everything logged for every secret in the config, every token and refresh
token the fakes issued, and every query string sent. Both what a reader sees
(the formatted lines) and what log calls were handed (messages and fields,
before any scrubbing) are checked, and so is the stderr of a real
``python -m proxy serve --log-level debug`` process.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.clock import ManualClock
from proxy.telemetry import logs as logs
from tests.conftest import Echo
from tests.fakes import B2B, Fault, GetPaid, InvoiceNg, serve
from tests.tokenkit import call
from tests.waiting import managers_idle, until

INV_KEY = "inv-api-key-0f3a9c77e1"
B2B_PASSWORD = "b2b-password-8d2e61c0"
GP_SECRET = "gp-client-secret-5a7b3e19"
BAD_SECRET = "wrong-client-secret-77aa01"
STATIC_KEY = "static-api-key-4c9d2b88"
CLIENT_AUTH = "Bearer client-own-credential-61f0"
CLIENT_COOKIE = "session=cookie-value-93ab17"
QUERY = "q=query-secret-2bd4e6&page=7"
SECRETS = [INV_KEY, B2B_PASSWORD, GP_SECRET, BAD_SECRET, STATIC_KEY]
SENT = [CLIENT_AUTH.split()[1], CLIENT_COOKIE.split("=")[1], "query-secret-2bd4e6", "page=7"]
ENV = {"INV": INV_KEY, "B2BP": B2B_PASSWORD, "GPS": GP_SECRET, "BAD": BAD_SECRET, "SK": STATIC_KEY}


def config_yaml(inv: str, b2b: str, gp: str, echo: str) -> str:
    return f"""
routes:
  inv:
    auth: {{preset: invoice_ng, api_key: "${{env:INV}}", base_url: {inv}/v1/}}
  b2b:
    auth: {{preset: b2b_jwt, username: b2b-api-user, password: "${{env:B2BP}}", base_url: {b2b}/}}
  gp:
    upstream: {gp}/
    auth:
      preset: getpaid
      client_id: getpaid-test-client-id
      client_secret: ${{env:GPS}}
      token_url: {gp}/oauth/token
  bad:
    upstream: {gp}/
    auth:
      preset: getpaid
      client_id: getpaid-test-client-id
      client_secret: ${{env:BAD}}
      token_url: {gp}/oauth/token
  static:
    upstream: {echo}/
    auth: {{type: static, header: X-Api-Key, value: "${{env:SK}}"}}
"""


class Raw(logging.Handler):
    """Everything log calls were handed: message and every field, unformatted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        parts = []
        for r in self.records:
            parts.append(r.getMessage())
            parts.extend(repr(v) for k, v in vars(r).items() if k not in ("msg", "args"))
        return "\n".join(parts)


@pytest.fixture
def captured() -> Iterator[tuple[Raw, io.StringIO]]:
    """DEBUG everywhere; (raw records, the JSON lines a reader would see)."""
    raw = Raw()
    out = io.StringIO()
    formatted = logging.StreamHandler(out)
    formatted.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    names = ["aiohttp", "aiohttp.access", "aiohttp.client", "aiohttp.server",
             "aiohttp.web", "aiohttp.internal", "asyncio", "authproxy"]  # fmt: skip
    saved = [(n, logging.getLogger(n).level, logging.getLogger(n).disabled) for n in names]
    old_level = root.level
    root.setLevel(logging.DEBUG)
    for n in names:
        logging.getLogger(n).setLevel(logging.DEBUG)
        logging.getLogger(n).disabled = False
    root.addHandler(raw)
    root.addHandler(formatted)
    yield raw, out
    root.removeHandler(raw)
    root.removeHandler(formatted)
    root.setLevel(old_level)
    for n, level, disabled in saved:
        logging.getLogger(n).setLevel(level)
        logging.getLogger(n).disabled = disabled


@pytest.fixture
async def fakes(clock: ManualClock) -> AsyncIterator[tuple[InvoiceNg, B2B, GetPaid, list[str]]]:
    inv = InvoiceNg(api_key=INV_KEY, clock=clock)
    b2b = B2B(password=B2B_PASSWORD, clock=clock)
    gp = GetPaid(clock=clock, client_secret=GP_SECRET)
    async with serve(inv) as u1, serve(b2b) as u2, serve(gp) as u3:
        yield inv, b2b, gp, [u1, u2, u3]


def assert_clean(text: str, *fakes: Any) -> None:
    for secret in SECRETS + SENT:
        assert secret not in text, f"{secret!r} leaked into the logs"
    for fake in fakes:
        assert fake.issued, "the fake issued nothing: the flow did not run"
        for token in fake.issued:
            assert token not in text, "a token the provider issued leaked into the logs"


async def run_flows(http: aiohttp.ClientSession, url: str, clock: ManualClock, fakes: Any) -> None:
    inv, b2b, gp = fakes
    h = {"Authorization": CLIENT_AUTH, "Cookie": CLIENT_COOKIE, "X-Request-Id": "rid-flow-1"}
    for path in ("/inv/invoices", "/b2b/api/v1/products", "/gp/charges", "/static/ping"):
        status, _, _ = await call(http, "GET", f"{url}{path}?{QUERY}", headers=h)
        assert status == 200, path
    clock.advance(3600)  # every token expired: invoice_ng refreshes, b2b rotates
    for path in ("/inv/invoices", "/b2b/api/v1/products", "/gp/charges"):
        assert (await call(http, "POST", f"{url}{path}?{QUERY}", headers=h, data=b"{}"))[0] == 200
    assert inv.refreshes == 1 and b2b.refreshes == 1 and len(b2b.refresh_tokens) == 2
    gp.revoke_all()  # the next request meets a 401 and is replayed with a new token
    assert (await call(http, "GET", f"{url}/gp/replayed?{QUERY}", headers=h))[0] == 200
    assert gp.logins == 3  # first, after expiry, after the 401
    status, body, headers = await call(http, "GET", f"{url}/bad/x?{QUERY}", headers=h)
    assert status == 502 and headers["X-Authproxy-Error"] == "token_unavailable"


async def test_debug_logs_of_every_flow_carry_no_secret_token_or_query(
    fakes: Any,
    echo: Echo,
    start_proxy: Any,
    http: aiohttp.ClientSession,
    clock: ManualClock,
    captured: tuple[Raw, io.StringIO],
) -> None:
    inv, b2b, gp, (u1, u2, u3) = fakes
    raw, out = captured
    proxy = await start_proxy(config_yaml(u1, u2, u3, echo.url), env=ENV, clock=clock)
    await run_flows(http, proxy.url, clock, (inv, b2b, gp))
    await until(lambda: managers_idle(proxy), "background refreshes done")  # their lines too

    lines = out.getvalue().splitlines()
    docs = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(docs) > 20
    assert any(d["level"] == "debug" for d in docs), "DEBUG was not on"
    assert_clean(out.getvalue(), inv, b2b, gp)
    assert_clean(raw.text(), inv, b2b, gp)  # not even handed to a log call

    events = [(d["route"], d["event"], d["source"]) for d in docs if "event" in d]
    assert ("inv", "obtained", "login") in events and ("inv", "refreshed", "refresh") in events
    assert ("b2b", "refreshed", "refresh") in events
    assert ("gp", "invalidated", "client_credentials") in events
    assert ("bad", "failed", "client_credentials") in events

    access = [d for d in docs if d["logger"] == "authproxy.access"]
    assert len(access) == 9
    first = access[0]
    assert first["route"] == "inv" and first["method"] == "GET"
    assert first["path"] == "/inv/invoices" and first["status"] == 200
    assert first["replayed"] is False
    assert first["request_id"] == "rid-flow-1" and first["bytes_out"] > 0
    assert first["duration_ms"] >= first["upstream_ms"] > 0
    posted = [d for d in access if d["method"] == "POST"]
    assert len(posted) == 3 and all(d["bytes_in"] == 2 for d in posted)
    # After expiry each of these got a refreshed token: awaited (token_fetched), or
    # already fetched by the refresh timer, which runs on the ManualClock now.
    assert all(isinstance(d["token_fetched"], bool) for d in posted)
    assert any(d["token_fetched"] for d in access[:3])  # the first logins were awaited
    assert access[3]["route"] == "static" and access[3]["token_fetched"] is False
    replay = next(d for d in access if d["path"] == "/gp/replayed")
    assert replay["replayed"] is True and replay["status"] == 200
    failed = access[-1]
    assert failed["route"] == "bad" and failed["status"] == 502
    assert failed["error"] == "token_unavailable"


async def test_request_id_kept_or_made_and_on_proxy_errors(
    echo: Echo, start_proxy: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(
        f"routes:\n  e: {{prefix: /e/, upstream: {echo.url}/, auth: {{type: none}}}}\n"
    )
    with caplog.at_level(logging.INFO, logger="authproxy.access"):
        await call(http, "GET", proxy.url + "/e/a", headers={"X-Request-Id": "client-id-1"})
        assert echo.last.header("X-Request-Id") == "client-id-1"
        await call(http, "GET", proxy.url + "/e/b")
        made = echo.last.header("X-Request-Id")
        status, _, headers = await call(http, "GET", proxy.url + "/nope")
        assert status == 404 and headers["X-Authproxy-Error"] == "no_route"
        made_for_error = headers["X-Request-Id"]
        _, _, headers = await call(
            http, "GET", proxy.url + "/nope", headers={"X-Request-Id": "client-id-2"}
        )
        assert headers["X-Request-Id"] == "client-id-2"
    ids = [r.request_id for r in caplog.records if r.name == "authproxy.access"]  # type: ignore[attr-defined]
    assert ids[0] == "client-id-1" and ids[1] == made and ids[2] == made_for_error
    assert made and made_for_error and made != made_for_error and ids[3] == "client-id-2"


async def test_access_log_off_costs_no_formatting(
    echo: Echo, start_proxy: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(
        f"routes:\n  e: {{prefix: /e/, upstream: {echo.url}/, auth: {{type: none}}}}\n"
    )
    with caplog.at_level(logging.WARNING, logger="authproxy.access"):
        assert (await call(http, "GET", proxy.url + "/e/a"))[0] == 200
    assert not [r for r in caplog.records if r.name == "authproxy.access"]


def test_formatters_scrub_credentials_and_known_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.config.schema import parse

    # Secrets remembered by earlier tests in this process (kept on purpose across
    # reloads) could mask words of this test's line: start from none, restore after.
    monkeypatch.setattr(logs, "_secrets", ())
    logs.remember_secrets(
        parse(
            "routes:\n  s: {prefix: /s/, upstream: http://h/, "
            "auth: {type: static, header: X, value: '${env:V}'}}\n",
            {"V": "remembered-secret-value"},
        )
    )
    record = logging.LogRecord(
        "authproxy", logging.WARNING, __file__, 1,
        "provider said: bad key remembered-secret-value; Authorization: Bearer abc.def; "
        "client_secret=hunter22", (), None,
    )  # fmt: skip
    record.detail = "echo remembered-secret-value"
    for fmt in (logs.JsonFormatter(), logs.TextFormatter()):
        line = fmt.format(record)
        assert "remembered-secret-value" not in line
        assert "abc.def" not in line and "hunter22" not in line
        assert "provider said: bad key ***" in line
    doc = json.loads(logs.JsonFormatter().format(record))
    assert doc["level"] == "warning" and doc["detail"] == "echo ***"


def test_exceptions_are_logged_by_type_and_frames_not_message() -> None:
    try:
        raise ValueError("https://api.example/x?client_secret=s3cr3t-in-message")
    except ValueError:
        record = logging.LogRecord(
            "authproxy", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    doc = json.loads(logs.JsonFormatter().format(record))
    assert doc["exception"] == "ValueError" and "test_logs.py" in doc["trace"]
    assert "error" not in doc  # a contract code only, never an exception type
    assert "s3cr3t" not in json.dumps(doc)
    assert "s3cr3t" not in logs.TextFormatter().format(record)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- what a reader of stderr gets: a strict logfmt parse, json.loads ----------------

_PAIR = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|[^\s"=\\]*)(?: (?=\S)|$)')
RFC3339_JSON = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
RFC3339_LOGFMT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def parse_logfmt(line: str) -> dict[str, str]:
    """``key=value`` pairs split by one space; a quoted value is a JSON string
    (strict: a raw control character or a bad escape fails); no key twice."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        m = _PAIR.match(line, pos)
        assert m, f"not logfmt at column {pos}: {line!r}"
        key, raw = m.groups()
        assert key not in out, f"{key} twice in {line!r}"
        out[key] = json.loads(raw) if raw.startswith('"') else raw
        pos = m.end()
    return out


def read_lines(text: str, fmt: str) -> list[dict[str, Any]]:
    """Every stderr line as a document; each must parse, and begin ts, level, logger, msg."""
    docs: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        doc = json.loads(line) if fmt == "json" else parse_logfmt(line)
        assert list(doc)[:4] == ["ts", "level", "logger", "msg"], line
        ts = RFC3339_JSON if fmt == "json" else RFC3339_LOGFMT
        assert ts.match(doc["ts"]), doc["ts"]
        assert datetime.fromisoformat(doc["ts"]).utcoffset() == timedelta(0)
        docs.append(doc)
    return docs


async def wait_healthy(http: aiohttp.ClientSession, admin: int, proc: Any) -> None:
    """Until the admin port answers /healthz (or fail, if the process died first)."""
    deadline = time.monotonic() + 20
    while True:
        assert proc.returncode is None, "authproxy exited while starting"
        try:
            async with http.get(f"http://127.0.0.1:{admin}/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, "authproxy did not become healthy in 20 s"
        await asyncio.sleep(0.05)


async def start_serve(cfg: Path, fmt: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--log-format", fmt, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_serve_process_debug_stderr_carries_no_secret(
    echo: Echo, tmp_path: Path, http: aiohttp.ClientSession, fmt: str
) -> None:
    inv = InvoiceNg(api_key=INV_KEY, token_ttl=3)  # real clock: expires, then refreshes
    b2b = B2B(password=B2B_PASSWORD, access_ttl=3)
    gp = GetPaid(client_secret=GP_SECRET)
    async with serve(inv) as u1, serve(b2b) as u2, serve(gp) as u3:
        port, admin = free_port(), free_port()
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            f"listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\n"
            + config_yaml(u1, u2, u3, echo.url)
            + "defaults: {refresh_before: 2s}\n"
        )
        env = {**ENV, "PYTHONASYNCIODEBUG": "1"}
        proc = await start_serve(cfg, fmt, "--log-level", "debug", env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            await wait_healthy(http, admin, proc)
            h = {"Authorization": CLIENT_AUTH, "Cookie": CLIENT_COOKIE}
            for path in ("/inv/a", "/b2b/api/v1/x", "/gp/a", "/static/a", "/bad/a"):
                await call(http, "GET", f"{url}{path}?{QUERY}", headers=h)
            gp.api_faults.append(Fault(status=None))  # a plain pass, then a revoked token
            gp.revoke_all()
            assert (await call(http, "GET", f"{url}/gp/replay?{QUERY}", headers=h))[0] == 200
            # background refreshes inside refresh_before (2 s, the tokens live a few)
            await until(lambda: inv.refreshes >= 1 and b2b.refreshes >= 1, "refreshes")
            for path in ("/inv/b", "/b2b/api/v1/y"):
                assert (await call(http, "GET", f"{url}{path}?{QUERY}", headers=h))[0] == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=15)
        assert proc.returncode == 0
        assert inv.refreshes >= 1 and b2b.refreshes >= 1 and gp.logins >= 2
        text = stderr.decode() + stdout.decode()
        docs = read_lines(text, fmt)  # every line: one JSON object, or one logfmt line
        assert any(d["level"] == "debug" for d in docs)
        access = [d for d in docs if d["logger"] == "authproxy.access"]
        assert len(access) == 8
        assert {str(d["status"]) for d in access} >= {"200", "502"}
        assert_clean(text, inv, b2b, gp)


def route_yaml(name: str, upstream: str, auth: str = "{type: none}") -> str:
    return f"  {name}:\n    prefix: /{name}/\n    upstream: {upstream}\n    auth: {auth}\n"


def gp_auth(gp_url: str) -> str:
    return (
        f"{{preset: getpaid, client_id: getpaid-test-client-id, client_secret: '${{env:GPS}}', "
        f"token_url: {gp_url}/oauth/token}}"
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_failing_upstream_is_logged_once_per_interval_not_per_request(
    echo: Echo, tmp_path: Path, http: aiohttp.ClientSession, fmt: str
) -> None:
    """A closed upstream port and a token endpoint answering 500: 6 requests each, and
    each failure is one warning per 10 s, whatever the requests; every request has
    its access line, with the answer's status and the contract's error code."""
    gp = GetPaid(client_secret=GP_SECRET)
    gp.always_fault = Fault(status=500)
    async with serve(gp) as gp_url:
        port, admin = free_port(), free_port()
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            f"listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\nroutes:\n"
            + route_yaml("down", f"http://127.0.0.1:{free_port()}/")
            + route_yaml("tok", f"{echo.url}/", gp_auth(gp_url))
            + route_yaml("ok", f"{echo.url}/")
        )
        proc = await start_serve(cfg, fmt, env={"GPS": GP_SECRET})
        n = 6
        try:
            await wait_healthy(http, admin, proc)
            for _ in range(n):
                for name in ("down", "tok", "ok"):
                    await call(http, "GET", f"http://127.0.0.1:{port}/{name}/x")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), timeout=15)
    docs = read_lines(stderr.decode(), fmt)
    access = {name: [d for d in docs if d["logger"] == "authproxy.access" and d["route"] == name]
              for name in ("down", "tok", "ok")}  # fmt: skip
    assert [(str(d["status"]), d["error"]) for d in access["down"]] == [
        ("502", "upstream_unavailable")
    ] * n
    assert [str(d["status"]) for d in access["ok"]] == ["200"] * n
    assert all(d["error"] in ("", None) for d in access["ok"])
    assert {d["error"] for d in access["tok"]} <= {"token_unavailable", "token_backoff"}
    assert {str(d["status"]) for d in access["tok"]} <= {"502", "503"}

    upstream = [d for d in docs if d["logger"] == "authproxy" and d.get("route") == "down"]
    assert upstream, "the failing upstream was not logged at all"
    assert all(d["error"] == "upstream_unavailable" and d["level"] == "warning" for d in upstream)
    assert "status" not in upstream[0]  # the answer's status is the access line's
    assert_throttled(upstream, n)

    token = [d for d in docs if d.get("event") == "failed" and d.get("route") == "tok"]
    assert token, "the failing token endpoint was not logged at all"
    assert all(str(d["token_status"]) == "500" and "status" not in d for d in token)
    assert_throttled(token, n + 1)  # the first attempt is at start-up
    # The proxy's own answer to a token failure is not a second warning per request.
    repeated = [d for d in docs if d["logger"] == "authproxy" and d.get("route") == "tok"
                and str(d.get("error", "")).startswith("token_")]  # fmt: skip
    assert repeated == []


def assert_throttled(lines: list[dict[str, Any]], at_most: int) -> None:
    """At most one line per 10 s; each says how many were left out before it."""
    stamps = [datetime.fromisoformat(d["ts"]) for d in lines]
    assert all((b - a).total_seconds() >= 9.999 for a, b in itertools.pairwise(stamps)), stamps
    assert str(lines[0]["suppressed"]) == "0"
    assert len(lines) + sum(int(d["suppressed"]) for d in lines) <= at_most


async def test_the_next_line_after_the_interval_counts_those_left_out(
    echo: Echo, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock,
    captured: tuple[Raw, io.StringIO],
) -> None:  # fmt: skip
    _, out = captured
    proxy = await start_proxy(
        "routes:\n" + route_yaml("down", f"http://127.0.0.1:{free_port()}/"), clock=clock
    )

    def warnings() -> list[dict[str, Any]]:
        docs = [json.loads(line) for line in out.getvalue().splitlines()]
        return [d for d in docs if d["logger"] == "authproxy" and d.get("route") == "down"]

    for _ in range(5):
        assert (await call(http, "GET", proxy.url + "/down/x"))[0] == 502
    assert [d["suppressed"] for d in warnings()] == [0]
    clock.advance(9.9)
    assert (await call(http, "GET", proxy.url + "/down/x"))[0] == 502
    assert len(warnings()) == 1
    clock.advance(0.2)  # 10.1 s after the first line: a new window
    assert (await call(http, "GET", proxy.url + "/down/x"))[0] == 502
    assert [d["suppressed"] for d in warnings()] == [0, 5]
    assert warnings()[1]["msg"].startswith("upstream_unavailable: cannot connect")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_an_invalid_config_at_start_is_one_line(tmp_path: Path, fmt: str) -> None:
    """An unreadable secret file and an unknown key: one line listing both, exit 2."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nroutes:\n"
        "  a:\n    upstream: http://127.0.0.1:9/\n    colour: blue\n"
        f"    auth: {{type: static, header: X-Key, value: '${{file:{tmp_path}/missing}}'}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--log-format", fmt],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    [doc] = read_lines(out.stderr, fmt)
    assert doc["level"] == "error" and doc["logger"] == "authproxy"
    assert str(doc["problems"]) == "2"
    assert doc["msg"].startswith("invalid configuration (2 problem(s)): ")
    assert "routes.a.colour: unknown key" in doc["msg"]
    assert f"cannot read secret file {tmp_path}/missing" in doc["msg"]


def test_a_port_in_use_at_start_is_one_json_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            f"listen: 127.0.0.1:{busy.getsockname()[1]}\nadmin_listen: 127.0.0.1:0\n"
            "routes:\n  a: {upstream: 'http://127.0.0.1:9/', auth: {type: none}}\n"
        )
        out = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "-c", str(cfg)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 1
    docs = read_lines(out.stderr, "json")
    errors = [d for d in docs if d["level"] == "error"]
    assert len(errors) == 1 and errors[0]["msg"].startswith("cannot listen: ")
    assert "address already in use" in errors[0]["msg"].lower()


def test_logfmt_quotes_escapes_and_scrubs_what_needs_it() -> None:
    from proxy.config.schema import parse

    logs.remember_secrets(
        parse(
            "routes:\n  s: {prefix: /s/, upstream: http://h/, "
            "auth: {type: static, header: X, value: '${env:V}'}}\n",
            {"V": "logfmt-secret-value-9a1"},
        )
    )
    record = logging.LogRecord(
        "authproxy", logging.WARNING, __file__, 1, 'said "%s" twice', ("logfmt-secret-value-9a1",),
        None,
    )  # fmt: skip
    record.detail = 'a=b "q" back\\slash\nnew line\ttab \x1b[31m bell\x07 \u2028 end'
    record.empty = ""
    record.nothing = None
    record.flag = True
    record.names = ["a", "b c"]
    record.api_key_header = "Authorization: Bearer abc.def.ghi"
    line = logs.TextFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line and "\u2028" not in line
    assert "logfmt-secret-value-9a1" not in line and "abc.def.ghi" not in line
    doc = parse_logfmt(line)
    assert doc["msg"] == 'said "***" twice'
    assert doc["detail"] == 'a=b "q" back\\slash\nnew line\ttab \x1b[31m bell\x07 \u2028 end'
    assert doc["empty"] == "" and doc["nothing"] == "" and doc["flag"] == "true"
    assert doc["names"] == "a,b c"
    assert doc["api_key_header"] == "Authorization: Bearer ***"
    assert RFC3339_LOGFMT.match(doc["ts"]) and doc["level"] == "warning"


def test_an_uncaught_exception_is_one_line_without_its_message() -> None:
    code = (
        "from proxy.telemetry import logs\n"
        "logs.setup('text')\n"
        "raise RuntimeError('https://x/?client_secret=uncaught-s3cret')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    [doc] = read_lines(out.stderr, "text")
    assert doc["level"] == "critical" and doc["msg"] == "unhandled exception"
    assert doc["exception"] == "RuntimeError" and "line 3" in doc["trace"]
    assert "uncaught-s3cret" not in out.stderr and "Traceback" not in out.stderr
