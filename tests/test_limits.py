"""Limits and timeouts: what a client or upstream cannot make the proxy do.

Each limit is exercised against the real proxy and a recording upstream, and
each test checks both the answer the client sees and what reached the upstream
(for a refused request: nothing, or at least nothing complete).
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp import web

from tests.fakes import Fault, GetPaid, serve
from tests.fakes.getpaid import LIVE_AUDIENCE
from tests.rawhttp import exchange, host_port, parse
from tests.waiting import until


def route(echo_url: str, extra: str = "", top: str = "") -> str:
    return (
        top
        + f"""
routes:
  api:
    prefix: /api/
    upstream: {echo_url}/v1/
    auth: {{type: static, value: Bearer k}}
"""
        + extra
    )


# -- header size ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "request-line"])
async def test_oversized_headers_are_refused_without_a_traceback(echo, start_proxy, where):
    proxy = await start_proxy(route(echo.url, top="limits: {max_header_size: 1KiB}\n"))
    host, port = host_port(proxy.url)
    big = "a" * 2048
    if where == "header":
        req = f"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n"
    else:
        req = f"GET /api/{big} HTTP/1.1\r\nHost: h\r\n\r\n"
    answer = parse(await exchange(host, port, req.encode()))
    # aiohttp's parser answers this itself, before the proxy's handler: a plain-text
    # 400 (not 431, not contract JSON), and never a traceback.
    assert answer.status in (400, 414, 431)
    assert b"Traceback" not in answer.body and b'File "' not in answer.body
    assert echo.seen == []

    # just under the limit still goes through
    ok = f"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Big: {'a' * 900}\r\nConnection: close\r\n\r\n"
    assert parse(await exchange(host, port, ok.encode())).status == 200
    assert len(echo.seen) == 1


# -- body size -------------------------------------------------------------------------------


async def test_content_length_over_max_body_is_413_and_nothing_is_forwarded(echo, start_proxy):
    proxy = await start_proxy(route(echo.url, top="limits: {max_body: 1KiB}\n"))
    host, port = host_port(proxy.url)
    # the client announces 10 MB and sends nothing: the proxy must not wait for it
    req = b"POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 10000000\r\n\r\n"
    answer = parse(await exchange(host, port, req, timeout=5, first_answer=True))
    assert answer.headers["connection"] == "close"
    assert answer.status == 413
    assert answer.error_code == "body_too_large"
    assert answer.json()["error"] == {
        "code": "body_too_large",
        "route": "api",
        "message": "the request body is larger than 1024 bytes",
    }
    assert echo.seen == []


async def test_route_max_body_overrides_the_global_limit(echo, start_proxy, http):
    proxy = await start_proxy(route(echo.url, extra="    max_body: 10\n"))
    async with http.post(f"{proxy.url}/api/x", data=b"x" * 11) as resp:
        assert resp.status == 413
        assert resp.headers["X-Authproxy-Error"] == "body_too_large"
    async with http.post(f"{proxy.url}/api/x", data=b"x" * 10) as resp:
        assert resp.status == 200
    assert [s.body for s in echo.seen] == [b"x" * 10]


async def chunked_over_limit(proxy_url: str, path: str, size: int) -> bytes:
    host, port = host_port(proxy_url)
    chunk = b"y" * 1000
    req = bytearray(
        f"POST {path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    for _ in range(size // len(chunk)):
        req += b"%x\r\n%s\r\n" % (len(chunk), chunk)
    req += b"0\r\n\r\n"
    return await exchange(host, port, bytes(req), timeout=5)


async def test_chunked_body_over_max_body_never_reaches_the_upstream_complete(start_proxy):
    started: list[int] = []
    completed: list[int] = []
    ended: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        started.append(1)
        try:
            body = await request.read()  # raises when the proxy cuts the body short
            completed.append(len(body))
        finally:
            ended.append(1)
        return web.Response(text="ok")

    app = web.Application(client_max_size=2**30)
    app.router.add_route("*", "/{tail:.*}", handle)
    from tests.conftest import serve_app

    runner, port = await serve_app(app)
    try:
        proxy = await start_proxy(
            route(f"http://127.0.0.1:{port}", top="limits: {max_body: 64KiB}\n")
        )
        raw = await chunked_over_limit(proxy.url, "/api/upload", 300_000)
        answer = parse(raw)
        assert answer.status == 413
        assert answer.error_code == "body_too_large"
        # Whatever reached the upstream ends there, one way or the other: wait for it.
        await until(lambda: len(ended) == len(started), "the upstream's handler ended")
        assert completed == []  # the upstream saw at most a truncated body
    finally:
        await runner.cleanup()


async def test_chunked_body_over_max_body_on_a_token_route(start_proxy):
    provider = GetPaid("gid", "gsecret")
    async with serve(provider) as url:
        proxy = await start_proxy(
            f"""
limits: {{max_body: 64KiB}}
routes:
  getpaid:
    prefix: /getpaid/
    upstream: {url}/
    max_replay_body: 16KiB
    auth:
      type: oauth2_client_credentials
      token_url: {url}/oauth/token
      client_id: gid
      client_secret: gsecret
      audience: {LIVE_AUDIENCE}
      body: json
"""
        )
        raw = await chunked_over_limit(proxy.url, "/getpaid/upload", 300_000)
        assert parse(raw).error_code == "body_too_large"
        # A request of its own after it: answered once the upstream read and answered
        # it, by when a body that had arrived whole would have been answered too.
        host, port = host_port(proxy.url)
        sentinel = b"GET /getpaid/ping HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        assert parse(await exchange(host, port, sentinel, timeout=5)).status == 200
        cut = provider.api_log[:-1]
        assert all(r.body_len < 300_000 for r in cut)
        assert all(r.status is None for r in cut)  # none was answered


# -- concurrency ------------------------------------------------------------------------------


async def test_over_max_concurrent_is_503_overloaded_with_retry_after(echo, start_proxy, http):
    release = asyncio.Event()
    arrived: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        arrived.append(request.raw_path)
        await release.wait()
        return web.Response(text="done")

    echo.handler = slow
    proxy = await start_proxy(route(echo.url, extra="    max_concurrent: 2\n"))

    async def get(i: int) -> tuple[int, str]:
        async with http.get(f"{proxy.url}/api/{i}") as resp:
            return resp.status, await resp.text()

    held = [asyncio.ensure_future(get(i)) for i in range(2)]
    while len(arrived) < 2:
        await asyncio.sleep(0.01)
    async with http.get(f"{proxy.url}/api/3") as resp:
        assert resp.status == 503
        assert resp.headers["X-Authproxy-Error"] == "overloaded"
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"]["route"] == "api"
    assert len(arrived) == 2  # the refused one was not forwarded
    release.set()
    assert await asyncio.gather(*held) == [(200, "done"), (200, "done")]
    # the slots are free again
    async with http.get(f"{proxy.url}/api/4") as resp:
        assert resp.status == 200
    async with http.get(proxy.admin_url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'authproxy_inflight_requests{route="api"} 0.0' in metrics


# -- timeouts -----------------------------------------------------------------------------------


async def test_upstream_slower_than_timeout_is_504_and_sent_once(echo, start_proxy, http):
    async def sleepy(request: web.Request) -> web.Response:
        echo.seen.append(request)  # type: ignore[arg-type]
        await asyncio.sleep(5)
        return web.Response(text="late")

    echo.handler = sleepy
    proxy = await start_proxy(route(echo.url, extra="    timeout: 300ms\n"))
    started = time.monotonic()
    async with http.post(f"{proxy.url}/api/x", data=b"payload") as resp:
        assert resp.status == 504
        assert resp.headers["X-Authproxy-Error"] == "upstream_timeout"
    assert time.monotonic() - started < 2
    # Another POST, timed out after the upstream saw it: a resend of /x would be before it.
    async with http.post(f"{proxy.url}/api/y", data=b"payload") as resp:
        assert resp.status == 504
    assert [r.path for r in echo.seen] == ["/v1/x", "/v1/y"]


async def test_connect_timeout(start_proxy, http):
    # A listener whose accept queue is full: further SYNs are dropped, connect hangs.
    with socket.socket() as blocked:
        blocked.bind(("127.0.0.1", 0))
        blocked.listen(0)
        port = blocked.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port))
        try:
            proxy = await start_proxy(
                route(f"http://127.0.0.1:{port}", extra="    connect_timeout: 300ms\n")
            )
            started = time.monotonic()
            async with http.get(f"{proxy.url}/api/x") as resp:
                elapsed = time.monotonic() - started
                assert resp.status in (502, 504)
                assert resp.headers["X-Authproxy-Error"] in (
                    "upstream_timeout",
                    "upstream_unavailable",
                )
            assert elapsed < 2
        finally:
            filler.close()


async def test_idle_client_connections_are_closed(echo, start_proxy):
    proxy = await start_proxy(route(echo.url, top="limits: {idle_timeout: 300ms}\n"))
    host, port = host_port(proxy.url)

    # after an answer on a keep-alive connection
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
    started = time.monotonic()
    data = b""
    async with asyncio.timeout(5):
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
    assert parse(data).status == 200
    assert 0.2 < time.monotonic() - started < 3
    writer.close()

    # and a connection that never sends anything
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    assert time.monotonic() - started < 3
    writer.close()


async def test_token_timeout_bounds_a_slow_token_endpoint(start_proxy, http):
    provider = GetPaid("gid", "gsecret")
    provider.always_fault = Fault(status=None, delay=3.0)  # correct, but far too slow
    async with serve(provider) as url:
        proxy = await start_proxy(
            f"""
routes:
  getpaid:
    prefix: /getpaid/
    upstream: {url}/
    token_timeout: 300ms
    auth:
      type: oauth2_client_credentials
      token_url: {url}/oauth/token
      client_id: gid
      client_secret: gsecret
      audience: {LIVE_AUDIENCE}
      body: json
"""
        )
        started = time.monotonic()
        async with http.get(f"{proxy.url}/getpaid/x") as resp:
            assert resp.status in (502, 503)
            assert resp.headers["X-Authproxy-Error"] in ("token_backoff", "token_unavailable")
            assert "in time" in (await resp.json())["error"]["message"]
        assert time.monotonic() - started < 2
        assert provider.api_requests == 0
        provider.always_fault = None
