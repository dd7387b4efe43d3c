"""The proxy port's own HTTP server (proxy/http1/), through raw sockets.

Each test speaks bytes to the real proxy in front of the recording upstream and
checks what a client would notice: the answers, their order and framing, which
connection they came on, when the connection closes, and what reached the upstream.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from proxy import config as configmod
from proxy.app import create_app
from tests.rawhttp import Answer, exchange, host_port, parse


def route(echo_url: str, top: str = "") -> str:
    return (
        top
        + f"""
routes:
  api:
    prefix: /api/
    upstream: {echo_url}/v1/
    auth: {{type: static, value: Bearer k}}
    max_body: 1KiB
"""
    )


class Conn:
    """One client connection; reads answers one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = b""

    @classmethod
    async def open(cls, url: str) -> Conn:
        host, port = host_port(url)
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 5.0) -> Answer:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    got = parse(self.buf)
                    if got.complete and (got.body or "content-length" in got.headers):
                        self.buf = got.rest
                        return got
                except ValueError:
                    pass
                chunk = await self.reader.read(65536)
                if not chunk:
                    got = parse(self.buf)
                    self.buf = b""
                    return got
                self.buf += chunk

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the proxy closes the connection (nothing more arrives)."""
        async with asyncio.timeout(timeout):
            try:
                rest = await self.reader.read()
            except ConnectionResetError:
                return True
        return rest == b""

    def close(self) -> None:
        self.writer.close()


async def test_pipelined_requests_are_answered_in_order(echo, start_proxy):
    proxy = await start_proxy(route(echo.url))
    conn = await Conn.open(proxy.url)
    await conn.send(
        b"GET /api/one HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /api/two HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /api/three HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
        b"GET /api/four HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    paths = []
    for _ in range(4):
        answer = await conn.answer()
        assert answer.status == 200
        paths.append(answer.json()["path"])
    assert paths == ["/v1/one", "/v1/two", "/v1/three", "/v1/four"]
    assert await conn.closed()
    assert [(s.raw_path, s.body) for s in echo.seen] == [
        ("/v1/one", b""), ("/v1/two", b"hello"), ("/v1/three", b"abc"), ("/v1/four", b""),
    ]  # fmt: skip
    conn.close()


async def test_keep_alive_serves_many_requests_on_one_connection(echo, start_proxy):
    proxy = await start_proxy(route(echo.url))
    conn = await Conn.open(proxy.url)
    for i in range(5):
        await conn.send(f"GET /api/n/{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        answer = await conn.answer()
        assert answer.status == 200
        assert answer.json()["path"] == f"/v1/n/{i}"
        assert "connection" not in answer.headers
    assert len(echo.seen) == 5
    conn.close()


async def test_http_1_0_gets_no_chunked_answer_and_a_close(echo, start_proxy):
    async def streamed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()  # no length: chunked towards the proxy
        await resp.prepare(request)
        for part in (b"alpha-", b"beta-", b"gamma"):
            await resp.write(part)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    echo.handler = streamed
    proxy = await start_proxy(route(echo.url))
    host, port = host_port(proxy.url)
    raw = await exchange(host, port, b"GET /api/s HTTP/1.0\r\nHost: h\r\n\r\n", timeout=5)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body == b"alpha-beta-gamma"  # close-delimited, no chunk framing


async def test_http_1_0_keep_alive_with_a_length(echo, start_proxy):
    proxy = await start_proxy(route(echo.url))
    conn = await Conn.open(proxy.url)
    for i in range(2):
        await conn.send(
            f"GET /api/k/{i} HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n".encode()
        )
        answer = await conn.answer()
        assert answer.status == 200
        assert answer.headers["connection"].lower() == "keep-alive"
        assert answer.json()["path"] == f"/v1/k/{i}"
    await conn.send(b"GET /api/k/last HTTP/1.0\r\nHost: h\r\n\r\n")
    assert (await conn.answer()).status == 200
    assert await conn.closed()
    conn.close()


async def test_expect_100_continue_only_when_the_body_is_read(echo, start_proxy):
    proxy = await start_proxy(route(echo.url))
    conn = await Conn.open(proxy.url)
    await conn.send(
        b"POST /api/up HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    async with asyncio.timeout(5):
        interim = await conn.reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await conn.send(b"data")
    answer = await conn.answer()
    assert answer.status == 200
    assert echo.last.body == b"data"
    assert "expect" not in {k.lower() for k in echo.last.headers}

    # Over max_body by its Content-Length: refused at once, no 100 Continue first.
    await conn.send(
        b"POST /api/up HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    answer = await conn.answer()
    assert answer.status == 413
    assert answer.error_code == "body_too_large"
    assert answer.headers["connection"] == "close"
    assert len(echo.seen) == 1
    conn.close()

    # Refused before the body was asked for: the connection ends (the client may or may
    # not send the body, so the next request's start is unknown).
    conn = await Conn.open(proxy.url)
    await conn.send(
        b"POST /nowhere HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    answer = await conn.answer()
    assert (answer.status, answer.error_code) == (404, "no_route")
    assert answer.headers["connection"] == "close"
    assert b"100 Continue" not in conn.buf
    assert await conn.closed()
    conn.close()


async def test_oversized_header_is_contract_json_431_and_closes(echo, start_proxy):
    proxy = await start_proxy(route(echo.url, top="limits: {max_header_size: 1KiB}\n"))
    host, port = host_port(proxy.url)
    raw = await exchange(
        host, port, f"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Big: {'b' * 4000}\r\n\r\n".encode()
    )
    answer = parse(raw)
    assert (answer.status, answer.error_code) == (431, "bad_request")
    assert answer.headers["connection"] == "close"
    assert answer.headers["x-request-id"]
    assert "too long" in answer.json()["error"]["message"]
    assert answer.rest == b""  # and the connection closed after it (exchange read to EOF)
    assert echo.seen == []


async def test_malformed_request_line_is_contract_json_400_and_closes(echo, start_proxy):
    proxy = await start_proxy(route(echo.url))
    host, port = host_port(proxy.url)
    for line in (b"GET /api/x HTTP/9.9", b"G\xc3\xa9T /api/x HTTP/1.1", b"GET /api/ x y z"):
        # a good request first: it is answered, then the garbage gets its 400
        raw = await exchange(
            host, port, b"GET /api/ok HTTP/1.1\r\nHost: h\r\n\r\n" + line + b"\r\nHost: h\r\n\r\n"
        )
        first = parse(raw)
        assert first.status == 200
        second = parse(first.rest)
        assert (second.status, second.error_code) == (400, "bad_request"), line
        assert json.loads(second.body)["error"]["message"].startswith("malformed request")
        assert b"Traceback" not in raw
    assert [s.raw_path for s in echo.seen] == ["/v1/ok"] * 3


async def test_idle_keep_alive_connection_is_closed_after_idle_timeout(echo, start_proxy):
    proxy = await start_proxy(route(echo.url, top="limits: {idle_timeout: 300ms}\n"))
    conn = await Conn.open(proxy.url)
    await conn.send(b"GET /api/a HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await conn.answer()).status == 200
    began = time.monotonic()
    assert await conn.closed(timeout=3)
    assert 0.2 < time.monotonic() - began < 2.0
    conn.close()

    # a request that takes longer than idle_timeout is not cut: only idleness counts
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return web.Response(text="late")

    echo.handler = slow
    conn = await Conn.open(proxy.url)
    await conn.send(b"GET /api/slow HTTP/1.1\r\nHost: h\r\n\r\n")
    answer = await conn.answer()
    assert (answer.status, answer.body) == (200, b"late")
    conn.close()


async def test_head_answer_has_headers_and_no_body(echo, start_proxy):
    proxy = await start_proxy(route(echo.url))
    conn = await Conn.open(proxy.url)
    await conn.send(
        b"HEAD /api/h HTTP/1.1\r\nHost: h\r\n\r\nGET /api/g HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    async with asyncio.timeout(5):
        head = await conn.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length" in head.lower()  # the upstream's, kept
    conn.buf = b""
    answer = await conn.answer()  # next bytes are the GET's answer, not a HEAD body
    assert answer.status == 200
    assert answer.json()["path"] == "/v1/g"
    conn.close()


async def test_a_head_of_many_fields_is_bounded_as_a_whole(echo, start_proxy):
    proxy = await start_proxy(route(echo.url, top="limits: {max_header_size: 1KiB}\n"))
    host, port = host_port(proxy.url)
    field = "v" * 900

    def request(n: int) -> bytes:
        lines = "".join(f"X-F{i}: {field}\r\n" for i in range(n))
        return f"GET /api/x HTTP/1.1\r\nHost: h\r\n{lines}Connection: close\r\n\r\n".encode()

    assert parse(await exchange(host, port, request(20))).status == 200
    answer = parse(await exchange(host, port, request(60)))  # 54 kB > 32 x 1 KiB
    assert (answer.status, answer.error_code) == (431, "bad_request")
    assert len(echo.seen) == 1


async def test_stop_closes_idle_connections_at_once_and_lets_in_flight_ones_finish(echo):
    at_upstream, release = asyncio.Event(), asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/slow"):
            at_upstream.set()
            await asyncio.wait_for(release.wait(), 10)  # held until the test says
            return web.Response(text="late")
        return web.Response(text="fast")

    echo.handler = handler
    cfg = configmod.parse(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nshutdown_grace: 5s\n" + route(echo.url),
        {},
    )
    proxy = create_app(cfg)
    await proxy.start()
    idle = await Conn.open(proxy.url)
    await idle.send(b"GET /api/fast HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await idle.answer()).body == b"fast"
    busy = await Conn.open(proxy.url)
    await busy.send(b"GET /api/slow HTTP/1.1\r\nHost: h\r\n\r\n")
    await asyncio.wait_for(at_upstream.wait(), 10)  # the slow one is at the upstream now

    stopping = asyncio.create_task(proxy.stop())
    assert await idle.closed(timeout=5)
    assert not stopping.done()  # at once, not after the in-flight one (still held)
    release.set()
    answer = await busy.answer()
    assert (answer.status, answer.body) == (200, b"late")
    assert answer.headers["connection"] == "close"  # draining: no keep-alive offered
    assert await busy.closed()
    await asyncio.wait_for(stopping, 5)
    idle.close()
    busy.close()


async def test_a_body_cut_short_by_a_half_close_is_a_400_and_not_forwarded_whole(
    echo, start_proxy, caplog
):
    proxy = await start_proxy(route(echo.url))
    conn = await Conn.open(proxy.url)
    await conn.send(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 900\r\n\r\n" + b"a" * 100)
    conn.writer.write_eof()  # the client is done sending, 800 bytes short
    answer = await conn.answer()
    conn.close()
    assert answer.status == 400
    assert answer.headers["x-authproxy-error"] == "bad_request"
    assert json.loads(answer.body)["error"]["code"] == "bad_request"
    assert echo.seen == []  # the upstream never got a complete request
    assert "unexpected error" not in caplog.text


async def test_transfer_codings_other_than_chunked_are_refused(echo, start_proxy):
    proxy = await start_proxy(route(echo.url))
    for te in (b"gzip, chunked", b"chunked, chunked", b"identity"):
        conn = await Conn.open(proxy.url)
        await conn.send(
            b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + te + b"\r\n\r\n0\r\n\r\n"
        )
        answer = await conn.answer()
        conn.close()
        assert answer.status == 400, te
        assert answer.headers["x-authproxy-error"] == "bad_request"
    assert echo.seen == []


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 4x\r\n\r\nabcd",
        b"GET /api/x HTTP/1.1\nHost: h\n\n",
        b"GET /api/x y HTTP/1.1\r\nHost: h\r\n\r\n",
    ],
    ids=["cl-and-te", "two-lengths", "bad-length", "bare-lf", "space-in-target"],
)
async def test_ambiguous_framing_is_refused_and_nothing_is_forwarded(echo, start_proxy, raw):
    proxy = await start_proxy(route(echo.url))
    conn = await Conn.open(proxy.url)
    await conn.send(raw)
    answer = await conn.answer()
    conn.close()
    assert answer.status == 400
    assert answer.headers["x-authproxy-error"] == "bad_request"
    # A request of its own goes through: once the upstream saw it, it saw all before.
    conn = await Conn.open(proxy.url)
    await conn.send(b"GET /api/sentinel HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await conn.answer()).status == 200
    conn.close()
    assert [seen.raw_path for seen in echo.seen] == ["/v1/sentinel"]
