"""Every refusal is seen (issue 14): counted on /metrics, in the access log or the log.

As an operator sees them: the metrics text scraped from the admin port, and the
JSON lines the logs print. A request refused while parsing gets a (rate-limited)
warning and ``authproxy_proxy_errors_total{code="bad_request"}``; one that matches
no route is in ``authproxy_requests_total{route=""}``; the proxy's own answers
have their ``bytes_out``; a 401 replay that fetched a token says so.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from proxy.clock import ManualClock
from proxy.telemetry import logs
from tests.conftest import Echo
from tests.fakes import GetPaid, serve
from tests.rawhttp import exchange, host_port, parse
from tests.tokenkit import call, metric
from tests.waiting import until


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """The JSON lines the proxy logs (INFO and up: access log included)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    yield out
    root.removeHandler(handler)
    root.setLevel(old)


def docs(out: io.StringIO, logger: str) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    return [d for d in parsed if d["logger"] == logger]


def static_route(echo_url: str) -> str:
    return f"""
routes:
  api:
    prefix: /api/
    upstream: {echo_url}/
    auth: {{type: static, value: Bearer k}}
"""


#: what a hostile or broken client sends, refused while parsing
GARBAGE = [
    b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
]


async def test_requests_refused_while_parsing_are_counted_and_logged(
    echo: Echo, start_proxy: Any, http: aiohttp.ClientSession, lines: io.StringIO
) -> None:
    proxy = await start_proxy(static_route(echo.url))
    host, port = host_port(proxy.url)
    statuses = []
    for raw in GARBAGE:
        answer = parse(await exchange(host, port, raw))
        assert answer.headers["x-authproxy-error"] == "bad_request"
        statuses.append(answer.status)
    assert statuses == [431, 400, 400, 400]

    counted = await metric(
        http, proxy.admin_url, "authproxy_proxy_errors_total", route="", code="bad_request"
    )
    assert counted == len(GARBAGE)
    # Logged, but a flood does not flood the log: one line per interval.
    warned = [d for d in docs(lines, "authproxy.server") if "while parsing" in d["msg"]]
    assert len(warned) == 1
    assert warned[0]["level"] == "warning" and warned[0]["client"] == "127.0.0.1"
    assert "(431)" in warned[0]["msg"]
    # Nothing of it reached the upstream (a request on its own connection did).
    status, _, _ = await call(http, "GET", proxy.url + "/api/sentinel")
    assert status == 200
    assert [seen.raw_path for seen in echo.seen] == ["/sentinel"]


async def test_requests_without_a_route_are_in_requests_total(
    echo: Echo, start_proxy: Any, http: aiohttp.ClientSession, lines: io.StringIO
) -> None:
    proxy = await start_proxy(static_route(echo.url))
    status, body, headers = await call(http, "GET", proxy.url + "/nowhere/x")
    assert (status, headers["X-Authproxy-Error"]) == (404, "no_route")
    status, _, _ = await call(http, "POST", proxy.url + "/nowhere/y", data=b"abc")
    assert status == 404
    assert (await call(http, "GET", proxy.url + "/api/x"))[0] == 200

    def requests(**labels: str) -> Any:
        return metric(http, proxy.admin_url, "authproxy_requests_total", **labels)

    assert await requests(route="", method="GET", code="404") == 1
    assert await requests(route="", method="POST", code="404") == 1
    assert await requests(route="api", method="GET", code="200") == 1
    errors = await metric(
        http, proxy.admin_url, "authproxy_proxy_errors_total", route="", code="no_route"
    )
    assert errors == 2
    # The proxy's own answer has its size in the access log, like any other.
    access = docs(lines, "authproxy.access")
    refused = [d for d in access if d["status"] == 404]
    assert len(refused) == 2 and all(d["route"] == "" for d in refused)
    assert all(d["error"] == "no_route" for d in refused)
    assert refused[0]["bytes_out"] == len(json.dumps(body).encode()) > 0
    assert all(d["bytes_out"] > 0 for d in refused)


async def test_a_replay_that_fetched_a_token_says_so(
    start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock, lines: io.StringIO
) -> None:
    fake = GetPaid(clock=clock)
    async with serve(fake) as url:
        proxy = await start_proxy(
            f"""
routes:
  gp:
    upstream: {url}/
    auth:
      type: oauth2_client_credentials
      token_url: {url}/oauth/token
      client_id: getpaid-test-client-id
      client_secret: getpaid-test-client-secret
      audience: https://api.getpaid.io
      body: json
""",
            clock=clock,
        )
        manager = proxy.routes["gp"].manager
        assert manager is not None
        await until(lambda: manager.token is not None, "the first token")
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
        fake.revoke_all()  # the next request meets a 401, and a new token is fetched
        assert (await call(http, "GET", proxy.url + "/gp/b"))[0] == 200
        assert fake.token_requests == 2
    first, replay = docs(lines, "authproxy.access")
    assert first["token_fetched"] is False and first["replayed"] is False
    assert replay["replayed"] is True and replay["token_fetched"] is True
    assert replay["status"] == 200


async def test_a_parse_refusal_floods_one_line_per_interval(
    echo: Echo, start_proxy: Any, http: aiohttp.ClientSession, lines: io.StringIO
) -> None:
    proxy = await start_proxy(static_route(echo.url))
    host, port = host_port(proxy.url)
    answers = await asyncio.gather(*(exchange(host, port, GARBAGE[1]) for _ in range(20)))
    assert all(parse(a).status == 400 for a in answers)
    counted = await metric(
        http, proxy.admin_url, "authproxy_proxy_errors_total", route="", code="bad_request"
    )
    assert counted == 20
    warned = [d for d in docs(lines, "authproxy.server") if "while parsing" in d["msg"]]
    assert len(warned) == 1
