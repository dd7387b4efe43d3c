"""Token behaviour through the real proxy: single flight, refresh early, 401 replay,
token endpoint failures with backoff, and steady load across many expiries.

The provider is a strict fake on a real port; the clock is a ManualClock shared
by the proxy and the fake, so that hours pass in microseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.clock import ManualClock, SystemClock
from tests.fakes import Fault, GetPaid, InvoiceNg, serve
from tests.tokenkit import assert_no_token, call, metric
from tests.waiting import managers_idle


@pytest.fixture
async def getpaid(clock: ManualClock) -> AsyncIterator[tuple[GetPaid, str]]:
    fake = GetPaid(clock=clock)
    async with serve(fake) as url:
        yield fake, url


def yaml_for(url: str, token_url: str | None = None, extra: str = "") -> str:
    return f"""
routes:
  gp:
    upstream: {url}/
    token_timeout: 500ms{extra}
    auth:
      type: oauth2_client_credentials
      token_url: {token_url or url + "/oauth/token"}
      client_id: getpaid-test-client-id
      client_secret: getpaid-test-client-secret
      audience: https://api.getpaid.io
      body: json
"""


async def wait_for(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# -- single flight, cache, refresh early --------------------------------------------------


async def test_500_concurrent_cold_requests_cause_one_token_request(
    getpaid: tuple[GetPaid, str], start_proxy: Any, clock: ManualClock
) -> None:
    fake, url = getpaid
    fake.faults.append(Fault(status=None, delay=0.3))  # a slow token endpoint: all pile up
    # 500 connections accepted at once (limits.backlog 1024) share one loop with the fake
    # provider's answer: give the token request room (this test counts, it does not time).
    proxy = await start_proxy(
        yaml_for(url).replace("token_timeout: 500ms", "token_timeout: 5s"), clock=clock
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        results = await asyncio.gather(
            *(call(http, "GET", f"{proxy.url}/gp/items/{i}") for i in range(500))
        )
    assert [r[0] for r in results].count(200) == 500
    assert fake.token_requests == 1
    assert {r[1]["token"] for r in results} == {fake.api_log[0].token_id}
    assert fake.api_requests == 500


async def test_refresh_early_in_background_no_request_waits(
    getpaid: tuple[GetPaid, str], start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    fake, url = getpaid
    proxy = await start_proxy(yaml_for(url, extra="\n    refresh_before: 5m"), clock=clock)
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    first = fake.api_log[-1].token_id

    clock.advance(3600 - 301)  # just outside the window: still cached
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    assert fake.token_requests == 1

    manager = proxy.routes["gp"].manager
    fetched_before = manager.last_refresh
    clock.advance(2)  # inside: answered at once with the current token, refresh starts
    fake.faults.append(Fault(status=None, delay=0.4))
    started = time.monotonic()
    statuses = [(await call(http, "GET", proxy.url + "/gp/a"))[0] for _ in range(5)]
    assert time.monotonic() - started < 0.3, "a request waited for the refresh"
    assert statuses == [200] * 5
    assert {r.token_id for r in fake.api_log[-5:]} == {first}
    await wait_for(lambda: fake.logins == 2)
    # The fake counts the login before its answer reaches the proxy: wait for that too.
    await wait_for(lambda: manager.last_refresh != fetched_before)
    assert fake.token_requests == 2  # one background refresh, not one per request
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    assert fake.api_log[-1].token_id != first


async def test_short_lived_token_margin_is_half_its_lifetime(
    start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    fake = GetPaid(clock=clock, token_ttl=30)  # with the default 60 s margin
    async with serve(fake) as url:
        proxy = await start_proxy(yaml_for(url), clock=clock)
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
        clock.advance(14)
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
        assert fake.token_requests == 1  # not refreshed on every request
        clock.advance(2)  # 16 s in: past half its life
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
        await wait_for(lambda: fake.token_requests == 2)


async def test_expired_token_is_never_sent(
    getpaid: tuple[GetPaid, str], start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    fake, url = getpaid
    proxy = await start_proxy(yaml_for(url), clock=clock)
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    clock.advance(3600)
    fake.faults.append(Fault(status=None, delay=0.2))
    results = await asyncio.gather(*(call(http, "GET", proxy.url + "/gp/b") for _ in range(20)))
    assert [r[0] for r in results] == [200] * 20
    assert fake.token_requests == 2
    # the fake never saw an expired token: no 401 at all
    assert all(r.status == 200 for r in fake.api_log)


# -- 401: invalidate, refresh once, replay once ---------------------------------------------


async def test_401_replays_the_same_body(
    getpaid: tuple[GetPaid, str], start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    fake, url = getpaid
    proxy = await start_proxy(yaml_for(url), clock=clock)
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    fake.revoke_all()
    payload = os.urandom(300_000)
    digest = hashlib.sha256(payload).hexdigest()
    status, body, _ = await call(
        http, "POST", proxy.url + "/gp/upload?x=1", data=payload,
        headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert status == 200 and body["body_sha256"] == digest
    refused, replayed = fake.api_log[-2], fake.api_log[-1]
    assert refused.status == 401 and replayed.status == 200
    assert refused.body_sha256 == replayed.body_sha256 == digest
    assert replayed.query == "x=1"
    assert replayed.headers["authorization"] != refused.headers["authorization"]
    assert fake.token_requests == 2
    assert (
        await metric(
            http, proxy.admin_url, "authproxy_unauthorized_retries_total", outcome="replayed"
        )
        == 1
    )


async def test_401_with_chunked_body_is_replayed(
    getpaid: tuple[GetPaid, str], start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    fake, url = getpaid
    proxy = await start_proxy(yaml_for(url), clock=clock)
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    fake.revoke_all()

    async def gen() -> AsyncIterator[bytes]:
        for i in range(10):
            yield bytes([i]) * 1000

    status, body, _ = await call(http, "POST", proxy.url + "/gp/up", data=gen())
    expected = hashlib.sha256(b"".join(bytes([i]) * 1000 for i in range(10))).hexdigest()
    assert status == 200 and body["body_sha256"] == expected


async def test_large_body_401_goes_to_the_client(
    getpaid: tuple[GetPaid, str], start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    fake, url = getpaid
    proxy = await start_proxy(yaml_for(url, extra="\n    max_replay_body: 64KiB"), clock=clock)
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    fake.revoke_all()
    payload = os.urandom(200_000)
    status, body, headers = await call(http, "POST", proxy.url + "/gp/upload", data=payload)
    assert status == 401 and "X-Authproxy-Error" not in headers
    assert body["error"] == "invalid_token"  # the provider's own answer
    assert fake.api_log[-1].body_len == len(payload)  # streamed through whole, once
    assert (
        await metric(
            http, proxy.admin_url, "authproxy_unauthorized_retries_total", outcome="not_replayable"
        )
        == 1
    )
    # The refused token was dropped: the next request gets a fresh one.
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    assert fake.token_requests == 2


async def test_401_invalidates_only_the_token_that_was_sent(
    getpaid: tuple[GetPaid, str], start_proxy: Any, clock: ManualClock
) -> None:
    fake, url = getpaid
    proxy = await start_proxy(yaml_for(url), clock=clock)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
        fake.revoke_all()
        fake.faults.append(Fault(status=None, delay=0.1))
        results = await asyncio.gather(
            *(call(http, "POST", proxy.url + "/gp/b", data=b"x" * i) for i in range(50))
        )
    assert [r[0] for r in results] == [200] * 50
    # Fifty 401s with the old token, one new token: the newer one was never dropped.
    assert fake.token_requests == 2


async def test_in_flight_request_outlived_by_a_refresh_is_replayed(
    start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    """Invoice.ng invalidates the old token when it refreshes. A request sent with
    the old token is refused; the newer token is kept (not dropped) and used."""
    fake = InvoiceNg(clock=clock)
    async with serve(fake) as url:
        proxy = await start_proxy(
            f"""
routes:
  inv:
    auth: {{preset: invoice_ng, api_key: "{fake.api_key}", base_url: "{url}/v1/"}}
""",
            clock=clock,
        )
        assert (await call(http, "GET", proxy.url + "/inv/a"))[0] == 200
        clock.advance(3600 - 30)  # inside the refresh window
        # The API holds this request while the background refresh revokes its token.
        fake.api_faults.append(Fault(status=None, delay=0.3))
        status, body, _ = await call(http, "PATCH", proxy.url + "/inv/b", data=b"{}")
        assert status == 200
        assert [r.status for r in fake.api_log[-2:]] == [401, 200]
        assert fake.refreshes == 1 and fake.logins == 1
        assert fake.token_requests == 2  # the refused token was already replaced: no fetch
        assert body["body_sha256"] == hashlib.sha256(b"{}").hexdigest()


async def test_second_401_goes_to_the_client(
    getpaid: tuple[GetPaid, str], start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    fake, url = getpaid
    proxy = await start_proxy(yaml_for(url), clock=clock)
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    fake.api_faults.extend([Fault(status=401, body=b"{}", content_type="application/json")] * 2)
    status, _, headers = await call(http, "GET", proxy.url + "/gp/a")
    assert status == 401 and "X-Authproxy-Error" not in headers
    assert fake.api_requests == 3  # the first try and exactly one replay
    assert fake.token_requests == 2


# -- token endpoint failures ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


HTML = Fault(status=200, body=b"<html><body>Login</body></html>", content_type="text/html")
NO_TOKEN = Fault(status=200, body=b'{"token_type": "bearer"}', content_type="application/json")
TRUNCATED = Fault(status=200, body=b'{"access_token": "ab', content_type="application/json")
SERVER_ERROR = Fault(status=500)
BAD_CLIENT = Fault(status=401, body=b'{"error": "invalid_client"}', content_type="application/json")
HUGE = Fault(status=200, body=b"x", content_type="application/json", size=10 * 1024 * 1024)
SLOW = Fault(status=None, delay=2.0)


@pytest.mark.parametrize(
    ("fault", "status", "code", "message"),
    [
        (SERVER_ERROR, 503, "token_backoff", "token endpoint answered 500"),
        (SLOW, 503, "token_backoff", "token endpoint did not answer in time"),
        (HTML, 502, "token_unavailable", "token endpoint answered 200 with HTML, not JSON"),
        (NO_TOKEN, 502, "token_unavailable", "token endpoint answer has no access_token"),
        (TRUNCATED, 502, "token_unavailable", "token endpoint answered 200 with invalid or"),
        (BAD_CLIENT, 502, "token_unavailable", "token endpoint answered 401 (invalid_client)"),
        (HUGE, 502, "token_unavailable", "token endpoint answered 200 with more than 1024 KiB"),
        (None, 503, "token_backoff", "token endpoint unreachable (connection refused)"),
    ],
    ids=["500", "slow", "html", "no-token", "truncated", "401", "10MB", "down"],
)
async def test_token_endpoint_failure_is_bounded_and_recovers(
    fault: Fault | None,
    status: int,
    code: str,
    message: str,
    getpaid: tuple[GetPaid, str],
    start_proxy: Any,
    clock: ManualClock,
    http: Any,
) -> None:
    fake, url = getpaid
    token_url = f"http://127.0.0.1:{free_port()}/oauth/token" if fault is None else None
    if fault is not None:
        fake.always_fault = fault
    proxy = await start_proxy(yaml_for(url, token_url), clock=clock)
    attempts = (lambda: fake.token_requests) if fault is not None else (lambda: 0)

    for step in range(3):
        results = await asyncio.gather(*(call(http, "GET", proxy.url + "/gp/a") for _ in range(20)))
        for got, body, headers in results:
            assert got == status and headers["X-Authproxy-Error"] == code
            assert body["error"]["message"].startswith(message), body
            assert body["error"]["route"] == "gp"
            assert "getpaid-test-client-secret" not in str(body)
            if code == "token_backoff":
                assert int(headers["Retry-After"]) >= 1
        if fault is not None:
            assert attempts() == step + 1  # one attempt per backoff step, whatever the rate
        clock.advance(120)  # past the longest backoff step
    assert fake.api_requests == 0

    # The provider comes back.
    fake.always_fault = None
    if fault is None:
        return
    clock.advance(120)
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    assert fake.logins == 1
    assert (
        await metric(
            http, proxy.admin_url, "authproxy_token_requests_total", route="gp", outcome="error"
        )
        == 3
    )


async def test_429_retry_after_is_honoured(
    getpaid: tuple[GetPaid, str], start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    fake, url = getpaid
    fake.always_fault = Fault(
        status=429, body=b'{"error": "too_many_requests"}', content_type="application/json",
        headers={"Retry-After": "300"},
    )  # fmt: skip
    proxy = await start_proxy(yaml_for(url), clock=clock)
    status, body, headers = await call(http, "GET", proxy.url + "/gp/a")
    assert status == 503 and headers["X-Authproxy-Error"] == "token_backoff"
    assert body["error"]["message"].startswith("token endpoint answered 429 (too_many_requests)")
    assert 250 <= int(headers["Retry-After"]) <= 300
    clock.advance(120)  # past every backoff step, but not past Retry-After
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 503
    assert fake.token_requests == 1
    fake.always_fault = None
    clock.advance(200)
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200


async def test_refresh_failure_keeps_the_valid_token(
    getpaid: tuple[GetPaid, str], start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    """A background refresh that fails does not hurt requests while the token is valid."""
    fake, url = getpaid
    proxy = await start_proxy(yaml_for(url), clock=clock)
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    fake.always_fault = SERVER_ERROR
    clock.advance(3600 - 50)
    for _ in range(20):
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    await wait_for(lambda: fake.token_requests == 2)
    # The failed refresh is recorded (the manager is in backoff) before more requests:
    # with the clock stopped, none of them may start another token request.
    manager = proxy.routes["gp"].manager
    await wait_for(lambda: manager.last_error is not None and managers_idle(proxy))
    for _ in range(5):
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    assert managers_idle(proxy) and fake.token_requests == 2  # backing off, not hammering
    fake.always_fault = None
    clock.advance(40)  # 10 s left; the backoff step has passed
    assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
    await wait_for(lambda: fake.logins == 2)


# -- steady load across expiries -------------------------------------------------------------


async def test_steady_load_across_many_expiries_invoice_ng(
    start_proxy: Any, clock: ManualClock
) -> None:
    """Invoice.ng invalidates the old token on refresh: in-flight requests see a 401,
    are replayed with the new token, and no client ever sees a failure."""
    fake = InvoiceNg(clock=clock, token_ttl=20)
    async with serve(fake) as url:
        proxy = await start_proxy(
            f"""
routes:
  inv:
    auth: {{preset: invoice_ng, api_key: "{fake.api_key}", base_url: "{url}/v1/"}}
""",
            clock=clock,
        )
        stop = asyncio.Event()
        statuses: list[int] = []

        async def ticker() -> None:
            while not stop.is_set():
                clock.advance(0.5)  # under the 1 s send margin: no token expires in flight
                await asyncio.sleep(0.002)

        async def client(http: aiohttp.ClientSession, n: int) -> None:
            while not stop.is_set():
                status, body, _ = await call(http, "POST", f"{proxy.url}/inv/c{n}", data=b"{}")
                statuses.append(status)
                if status != 200:
                    assert_no_token(str(body), fake)

        async with aiohttp.ClientSession() as http:
            tasks = [asyncio.create_task(client(http, n)) for n in range(8)]
            tick = asyncio.create_task(ticker())
            # under load until several expiries are crossed (not for a guessed time)
            await wait_for(lambda: fake.refreshes >= 5 and len(statuses) > 200)
            stop.set()
            await asyncio.gather(*tasks, tick)
            replayed = await metric(
                http, proxy.admin_url, "authproxy_unauthorized_retries_total", outcome="replayed"
            )
    assert len(statuses) > 200
    assert set(statuses) == {200}
    assert fake.refreshes >= 5  # several expiries crossed
    assert fake.logins == 1
    # Every 401 the provider answered (an in-flight request holding the token a
    # refresh had just invalidated) was replayed; none reached a client.
    refused = sum(1 for r in fake.api_log if r.status == 401)
    assert refused == replayed
    print(f"requests={len(statuses)} refreshes={fake.refreshes} replayed={refused}")


async def test_steady_load_real_clock_short_ttl(start_proxy: Any) -> None:
    """Real time, 3 s tokens: timers and request-triggered refreshes keep it fresh.

    (3 s, not 2: the JWT's whole-second exp wins over expires_in when earlier, and a
    token living under 1 s more is unusable on arrival.)"""
    fake = GetPaid(clock=SystemClock(), token_ttl=3)
    async with serve(fake) as url:
        proxy = await start_proxy(yaml_for(url))
        statuses: list[int] = []
        deadline = time.monotonic() + 3.5
        async with aiohttp.ClientSession() as http:

            async def client() -> None:
                while time.monotonic() < deadline:
                    statuses.append((await call(http, "GET", proxy.url + "/gp/a"))[0])
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(client() for _ in range(4)))
    assert set(statuses) == {200}
    assert fake.token_requests >= 3
    assert all(r.status == 200 for r in fake.api_log)
