"""Issue 12, items 7 and 8: conformance points and bounds, one named test each.

A refused request gets a JSON contract error (``X-Authproxy-Error`` and a body naming the
same code) and never reaches the upstream. Deadlines are short: a hang fails fast.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.conftest import ProxyFactory
from tests.referee import Referee, Reply
from tests.referee_client import (
    ROUTE,
    Answer,
    Answers,
    closed_within,
    exchange,
    open_client,
    port_of,
    read_answers,
)


@pytest.fixture
async def ref() -> AsyncIterator[Referee]:
    referee = await Referee().start()
    yield referee
    await referee.stop()


@pytest.fixture
async def port(ref: Referee, start_proxy: ProxyFactory) -> int:
    proxy = await start_proxy(ROUTE.format(url=ref.url))
    return port_of(proxy.url)


def assert_refused(got: Answers, ref: Referee, statuses: tuple[int, ...] = (400,)) -> Answer:
    """One JSON contract error, and nothing forwarded."""
    assert not got.timed_out, "no answer within the deadline"
    assert got.answers, (got.error, got.rest[:200])
    answer = got.answers[0]
    assert answer.status in statuses, (answer.status, answer.body[:200])
    assert answer.error_code, answer.headers
    assert answer.json()["error"]["code"] == answer.error_code
    assert ref.requests == [], [r.target for r in ref.requests]
    return answer


# -- item 7 -------------------------------------------------------------------------------


async def test_http10_with_te_closes(ref: Referee, port: int) -> None:
    # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is a framing fault; close after answering.
    data = (
        b"POST /svc/a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /svc/b HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
    )
    reader, writer = await open_client(port)
    try:
        writer.write(data)
        got = await read_answers(reader, ["POST"], timeout=4)
        assert got.answers and got.answers[0].status in (200, 400), got
        assert got.closed or await closed_within(reader, 3), "the connection stayed open"
    finally:
        writer.transport.abort()
    assert b"/base/b" not in [r.target for r in ref.requests]
    for r in ref.requests:  # forwarded, then with its body intact
        assert (r.target, r.body) == (b"/base/a", b"abc")


async def test_missing_host_400(ref: Referee, port: int) -> None:
    got = await exchange(port, b"GET /svc/x HTTP/1.1\r\nAccept: */*\r\n\r\n", ["GET"], timeout=4)
    assert_refused(got, ref)


async def test_duplicate_host_400(ref: Referee, port: int) -> None:
    data = b"GET /svc/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    assert_refused(await exchange(port, data, ["GET"], timeout=4), ref)


@pytest.mark.parametrize("host", [b"a b", b"a/b", b"a@b", b"[::1", b"a:b:c"])
async def test_invalid_host_400(ref: Referee, port: int, host: bytes) -> None:
    data = b"GET /svc/x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    assert_refused(await exchange(port, data, ["GET"], timeout=4), ref)


async def test_trailers_not_merged(ref: Referee, port: int) -> None:
    data = (
        b"POST /svc/t HTTP/1.1\r\nHost: a\r\nTrailer: X-Late\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nbody\r\n0\r\nX-Late: trailer-value\r\nX-Api-Key: forged\r\n\r\n"
    )
    got = await exchange(port, data, ["POST"], timeout=4)
    assert got.answers and got.answers[0].status == 200
    [seen] = ref.requests
    assert seen.body == b"body"
    assert seen.header("X-Late") is None  # RFC 9110 6.5.1: never merged into the head
    assert seen.values("X-Api-Key") == [b"k-123"]
    assert (b"X-Api-Key", b"forged") not in seen.trailers  # the proxy's header, not forgeable


async def test_no_100_continue_for_http10(ref: Referee, port: int) -> None:
    reader, writer = await open_client(port)
    head = b"POST /svc/e HTTP/%s\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    try:
        # control: an HTTP/1.1 client is asked for its body
        writer.write(head % b"1.1")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)).startswith(
            b"HTTP/1.1 100"
        )
        writer.write(b"body")
        assert [a.status for a in (await read_answers(reader, ["POST"], timeout=3)).answers] == [
            200
        ]
    finally:
        writer.transport.abort()
    reader, writer = await open_client(port)
    try:
        writer.write(head % b"1.0")
        # the same wait the 1.1 client needed for its 100: nothing may come now
        with contextlib.suppress(TimeoutError):
            early = await asyncio.wait_for(reader.read(100), 1.0)
            assert not early.startswith(b"HTTP/1.1 100"), early
        writer.write(b"body")
        got = await read_answers(reader, ["POST"], timeout=3)
    finally:
        writer.transport.abort()
    assert got.answers and got.answers[0].interim == [] and got.answers[0].status == 200


async def test_refusal_lingers_so_pipelined_client_gets_whole_answer(
    ref: Referee, port: int
) -> None:
    # A refused request followed by more pipelined bytes: closing at once would reset the
    # connection and could destroy the error answer before the client reads it.
    bad = b"GET /svc/../../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n"  # escapes its prefix
    more = b"GET /svc/y HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 4000 + b"\r\n\r\n"
    reader, writer = await open_client(port)
    try:
        writer.write(bad)
        await writer.drain()
        writer.write(more * 60)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        got = await read_answers(reader, ["GET"], timeout=4)
    finally:
        writer.transport.abort()
    answer = assert_refused(got, ref)
    assert answer.complete


async def test_header_field_count_bound(ref: Referee, port: int) -> None:
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(2000))
    data = b"GET /svc/x HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    assert_refused(await exchange(port, data, ["GET"], timeout=4), ref, (400, 431))


async def test_long_request_line_414(ref: Referee, port: int) -> None:
    data = b"GET /svc/" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert_refused(await exchange(port, data, ["GET"], timeout=4), ref, (414,))


async def test_long_header_field_431(ref: Referee, port: int) -> None:
    data = b"GET /svc/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n"
    assert_refused(await exchange(port, data, ["GET"], timeout=4), ref, (431,))


async def test_upstream_answer_head_size_bound(ref: Referee, port: int) -> None:
    huge = [(f"X-U{i}", "u" * 1000) for i in range(2000)]  # a 2 MB head
    ref.script = lambda req, index: Reply(headers=huge)
    got = await exchange(port, b"GET /svc/x HTTP/1.1\r\nHost: a\r\n\r\n", ["GET"], timeout=4)
    assert not got.timed_out and got.answers, got.error
    assert got.answers[0].status == 502 and got.answers[0].error_code == "upstream_unavailable"


# -- item 8 -------------------------------------------------------------------------------


async def test_unfinished_500kb_header_field_refused_promptly(ref: Referee, port: int) -> None:
    # max_header_size (16 KiB) must hold while the field is still arriving, not only at
    # its end: the old code buffered all of it and answered nothing until the idle timeout.
    reader, writer = await open_client(port)
    try:
        writer.write(b"GET /svc/x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(50):
                writer.write(b"s" * 10_000)
                await writer.drain()
        got = await read_answers(reader, ["GET"], timeout=3)
    finally:
        writer.transport.abort()
    assert_refused(got, ref, (400, 431))
