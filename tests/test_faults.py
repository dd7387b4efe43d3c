"""Fault injection: upstreams and clients misbehaving, against the real proxy.

The token-endpoint fault matrix (down, slow, 500, 429 with Retry-After, HTML,
truncated JSON, no token field, 10 MB answers, recovery) lives in
tests/test_tokens.py; this module covers the upstream side, what the proxy does
to requests that fail there (never replayed, except after a 401), clients that
go away mid-exchange (nothing leaks), and recovery without a restart.

Upstream faults are raw asyncio servers, so that they can do what no HTTP
server library would: reset before the headers, cut a body short, lie about
Content-Length, stall mid-answer. Each test counts at the upstream, so that a
lost or duplicated request would show.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fakes import Fault, GetPaid, serve
from tests.fakes.getpaid import LIVE_AUDIENCE
from tests.rawhttp import exchange, host_port, parse

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


def rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset rather than a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class RawUpstream:
    """An HTTP/1.1 server by hand: reads each request head (and a Content-Length body),
    counts it, and lets ``behaviour`` answer, however wrongly."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> RawUpstream:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", port)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self.server.wait_closed()
        self.server = None

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                await self.behaviour(reader, writer, head)
                if writer.transport.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
async def raw_upstream():
    made: list[RawUpstream] = []

    async def make(behaviour: Behaviour, port: int = 0) -> RawUpstream:
        up = await RawUpstream(behaviour).start(port)
        made.append(up)
        return up

    yield make
    for up in made:
        await up.stop()


def route(url: str, extra: str = "") -> str:
    return f"""
routes:
  api:
    prefix: /api/
    upstream: {url}/v1/
    auth: {{type: static, value: Bearer k}}
{extra}"""


async def ok(reader: Any, writer: asyncio.StreamWriter, head: bytes) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()


# -- upstream faults ------------------------------------------------------------------------


async def test_reset_before_headers_is_502_and_the_post_is_sent_once(
    raw_upstream, start_proxy, http
):
    calls = 0

    async def first_ok_then_reset(reader: Any, writer: asyncio.StreamWriter, head: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await ok(reader, writer, head)
        else:
            rst(writer)

    up = await raw_upstream(first_ok_then_reset)
    proxy = await start_proxy(route(up.url))
    # the first request leaves a pooled keep-alive connection: the reset hits a reused one,
    # where an HTTP client is most tempted to retry
    async with http.post(f"{proxy.url}/api/a", data=b"one") as resp:
        assert resp.status == 200
    async with http.post(f"{proxy.url}/api/b", data=b"two") as resp:
        assert resp.status == 502
        assert resp.headers["X-Authproxy-Error"] == "upstream_unavailable"
        assert (await resp.json())["error"]["route"] == "api"
    # Another POST, answered after the upstream saw it: a resend of /b would be before it.
    async with http.post(f"{proxy.url}/api/c", data=b"three") as resp:
        assert resp.status == 502
    assert [r.split(b" ")[1] for r in up.requests] == [b"/v1/a", b"/v1/b", b"/v1/c"]


async def body_then(
    writer: asyncio.StreamWriter, *, announce: int, send: int, chunked: bool = False
) -> None:
    if chunked:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (send, b"z" * send))
    else:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % announce)
        writer.write(b"z" * send)
    await writer.drain()


@pytest.mark.parametrize("how", ["reset", "short-content-length", "chunked-cut", "stall"], ids=str)
async def test_upstream_failing_mid_body_gives_a_visibly_truncated_answer(
    raw_upstream, start_proxy, http, caplog, how
):
    async def behaviour(reader: Any, writer: asyncio.StreamWriter, head: bytes) -> None:
        await body_then(writer, announce=100_000, send=30_000, chunked=how == "chunked-cut")
        await asyncio.sleep(0.05)
        if how == "reset":
            rst(writer)
        elif how == "stall":
            await asyncio.sleep(3)
        else:
            writer.close()  # a clean FIN, but the body is short

    up = await raw_upstream(behaviour)
    proxy = await start_proxy(route(up.url, "    timeout: 500ms\n    read_timeout: 500ms\n"))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="authproxy"):
        async with http.post(f"{proxy.url}/api/x", data=b"once") as resp:
            assert resp.status == 200  # the headers had gone out already
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        # the same through a raw socket: the body is short of its framing
        answer = parse(
            await exchange(*host_port(proxy.url), b"GET /api/y HTTP/1.1\r\nHost: h\r\n\r\n")
        )
    assert not answer.complete
    assert len(answer.body) == 30_000
    assert time.monotonic() - started < 3
    assert len(up.requests) == 2  # one each, never retried
    assert "stream aborted mid-answer" in caplog.text


async def test_slow_upstream_is_504_and_the_post_is_sent_once(raw_upstream, start_proxy, http):
    async def slow(reader: Any, writer: asyncio.StreamWriter, head: bytes) -> None:
        await asyncio.sleep(3)

    up = await raw_upstream(slow)
    proxy = await start_proxy(route(up.url, "    timeout: 300ms\n"))
    async with http.post(f"{proxy.url}/api/x", data=b"charge 10 EUR") as resp:
        assert resp.status == 504
        assert resp.headers["X-Authproxy-Error"] == "upstream_timeout"
    # Another POST, timed out after the upstream saw it: a resend of /x would be before it.
    async with http.post(f"{proxy.url}/api/y", data=b"charge 20 EUR") as resp:
        assert resp.status == 504
    assert [r.split(b" ")[1] for r in up.requests] == [b"/v1/x", b"/v1/y"]


# -- only a 401 is replayed -----------------------------------------------------------------

GETPAID = """
routes:
  gp:
    prefix: /gp/
    upstream: {url}/
    timeout: 300ms
    auth:
      type: oauth2_client_credentials
      token_url: {url}/oauth/token
      client_id: gid
      client_secret: gsecret
      audience: {aud}
      body: json
"""


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        (Fault(status=500), 500, None),
        (Fault(status=502), 502, None),
        (Fault(status=503, headers={"Retry-After": "1"}), 503, None),
        (Fault(status=429, headers={"Retry-After": "1"}), 429, None),
        (Fault(status=403, body=b"{}", content_type="application/json"), 403, None),
        (Fault(reset=True), 502, "upstream_unavailable"),
        (Fault(status=None, delay=1.0), 504, "upstream_timeout"),
    ],
    ids=["500", "502", "503", "429", "403", "reset", "timeout"],
)
async def test_a_post_failing_other_than_401_reaches_the_upstream_once(
    start_proxy, http, fault, status, code
):
    provider = GetPaid("gid", "gsecret")
    async with serve(provider) as url:
        proxy = await start_proxy(GETPAID.format(url=url, aud=LIVE_AUDIENCE))
        async with http.post(f"{proxy.url}/gp/payments", data=b'{"amount": 1}') as resp:
            assert resp.status == 200  # warm: a token and a pooled connection
        provider.api_faults.append(fault)
        async with http.post(f"{proxy.url}/gp/payments", data=b'{"amount": 2}') as resp:
            assert resp.status == status
            assert resp.headers.get("X-Authproxy-Error") == code
            await resp.read()
        # A request of its own, counted on arrival after the faulted one was answered:
        # a resend of the faulted one would have come before it.
        async with http.post(f"{proxy.url}/gp/payments", data=b'{"amount": 3}') as resp:
            assert resp.status == 200
        # the warm-up, the faulted one (never replayed), the one after
        assert provider.api_requests == 3
        assert provider.token_requests == 1


async def test_a_401_is_replayed_exactly_once(start_proxy, http):
    provider = GetPaid("gid", "gsecret")
    async with serve(provider) as url:
        proxy = await start_proxy(GETPAID.format(url=url, aud=LIVE_AUDIENCE))
        async with http.post(f"{proxy.url}/gp/payments", data=b"1") as resp:
            assert resp.status == 200
        provider.revoke_all()
        async with http.post(f"{proxy.url}/gp/payments", data=b"2") as resp:
            assert resp.status == 200
        assert provider.api_requests == 3  # the refused one, and its single replay
        assert [r.body_len for r in provider.api_log] == [1, 1, 1]
        assert provider.token_requests == 2


# -- recovery without a restart ----------------------------------------------------------------


async def test_upstream_coming_back_is_used_without_a_restart(raw_upstream, start_proxy, http):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = await start_proxy(route(f"http://127.0.0.1:{port}"))
    for _ in range(3):
        async with http.get(f"{proxy.url}/api/x") as resp:
            assert resp.status == 502
            assert resp.headers["X-Authproxy-Error"] == "upstream_unavailable"
    up = await raw_upstream(ok, port)
    async with http.get(f"{proxy.url}/api/x") as resp:
        assert resp.status == 200
        assert await resp.read() == b"ok"
    # and again after it went away and came back once more
    await up.stop()
    async with http.get(f"{proxy.url}/api/x") as resp:
        assert resp.status == 502
    await raw_upstream(ok, port)
    async with http.get(f"{proxy.url}/api/x") as resp:
        assert resp.status == 200
    assert len(up.requests) == 1


# -- clients that go away: nothing leaks ----------------------------------------------------------


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle(baseline_fds: int, baseline_tasks: int, slack: int) -> tuple[int, int]:
    deadline = time.monotonic() + 5
    while True:
        gc.collect()
        now_fds, now_tasks = fds(), len(asyncio.all_tasks())
        if now_fds <= baseline_fds + slack and now_tasks <= baseline_tasks + slack:
            return now_fds, now_tasks
        if time.monotonic() > deadline:
            return now_fds, now_tasks
        await asyncio.sleep(0.05)


async def aborted(
    host: str, port: int, request: bytes, at_upstream: asyncio.Event | None = None
) -> None:
    """Send ``request``, wait until it is under way, then reset the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    if at_upstream is not None:  # mid-upload: the upstream is reading this body now
        async with asyncio.timeout(5):
            await at_upstream.wait()
    else:  # mid-download: the answer has started to arrive
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(1000)
    rst(writer)


@pytest.mark.parametrize("when", ["mid-upload", "mid-download"])
async def test_1000_aborted_requests_leak_no_fds_or_tasks(echo, start_proxy, http, when, caplog):
    big = os.urandom(64 * 1024)
    entered = 0
    arrived: dict[str, asyncio.Event] = {}

    async def large(request: web.Request) -> web.StreamResponse:
        nonlocal entered
        entered += 1
        if request.path in arrived:
            arrived[request.path].set()
        try:
            await request.read()
        except ConnectionError:
            return web.Response()  # mid-upload: the proxy gave up on this request
        if when == "mid-upload":
            return web.Response(text="complete?")
        resp = web.StreamResponse()
        resp.content_length = 64 * len(big)
        await resp.prepare(request)
        try:
            # paced, so that the answer cannot all sit in socket buffers when the
            # client goes away: the proxy is mid-stream and must notice
            for _ in range(64):
                await resp.write(big)
                await asyncio.sleep(0.005)
        except ConnectionError:
            pass
        return resp

    echo.handler = large
    proxy = await start_proxy(route(echo.url))
    host, port = host_port(proxy.url)

    async def one(i: int) -> None:
        if when == "mid-upload":
            head = f"POST /api/up/{i} HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n"
            event = arrived[f"/v1/up/{i}"] = asyncio.Event()
            await aborted(host, port, head.encode() + big, event)
        else:
            await aborted(host, port, f"GET /api/down/{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode())

    sem = asyncio.Semaphore(50)

    async def limited(i: int) -> None:
        async with sem:
            await one(i)

    # Warm up at the same concurrency: the keep-alive pool to the upstream may hold up
    # to 50 idle connections (an answer that fit in the socket buffers was read to its
    # end, so its connection is reusable); that is a pool, not a leak.
    await asyncio.gather(*(limited(i) for i in range(100)))
    base_fds, base_tasks = await settle(fds(), len(asyncio.all_tasks()), 0)
    entered = 0

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        await asyncio.gather(*(limited(i) for i in range(1000, 2000)))
    elapsed = time.monotonic() - started
    end_fds, end_tasks = await settle(base_fds, base_tasks, 10)
    # a future or task whose exception nobody retrieved is a leak of its own
    unretrieved = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert unretrieved == [], unretrieved[:3]
    assert entered >= 1000  # they did reach the upstream before the client went away
    assert end_fds <= base_fds + 10, (base_fds, end_fds)
    assert end_tasks <= base_tasks + 10, (base_tasks, end_tasks)
    assert elapsed < 30
    # and the proxy still serves
    echo.handler = None
    async with http.get(f"{proxy.url}/api/after") as resp:
        assert resp.status == 200
    async with http.get(proxy.admin_url + "/metrics") as resp:
        assert 'authproxy_inflight_requests{route="api"} 0.0' in await resp.text()
