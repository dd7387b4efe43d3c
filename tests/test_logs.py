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
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
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


def test_formatters_scrub_credentials_and_known_secrets() -> None:
    from proxy.config.schema import parse

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
    assert doc["error"] == "ValueError" and "test_logs.py" in doc["trace"]
    assert "s3cr3t" not in json.dumps(doc)
    assert "s3cr3t" not in logs.TextFormatter().format(record)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_serve_process_debug_stderr_carries_no_secret(
    echo: Echo, tmp_path: Path, http: aiohttp.ClientSession
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
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--log-level", "debug",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **ENV, "PYTHONUNBUFFERED": "1", "PYTHONASYNCIODEBUG": "1"},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{admin}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
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
        lines = [line for line in text.splitlines() if line.strip()]
        assert all(line.startswith("{") for line in lines), "not one JSON object per line"
        docs = [json.loads(line) for line in lines]
        assert any(d["level"] == "debug" for d in docs)
        assert sum(d["logger"] == "authproxy.access" for d in docs) == 8
        assert_clean(text, inv, b2b, gp)
