"""Issue 12, items 1-5: one named regression test per framing defect, judged by h11.

The upstream is :class:`tests.referee.Referee` (h11 parses what the proxy sent it); the
client side parses the proxy's answers with h11 too. Every test has a short deadline, so
a hang fails in seconds, not at the route's 60 s timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import ProxyFactory
from tests.referee import Received, Referee, Reply, Script
from tests.referee_client import ROUTE, Answer, exchange, open_client, port_of, read_answers

#: a complete answer, as an upstream's stray bytes; it must never reach any client
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"
#: a final answer long enough to arrive in several reads after its 1xx
FINAL = b"final answer " * 25_000


@pytest.fixture
async def ref() -> AsyncIterator[Referee]:
    referee = await Referee().start()
    yield referee
    await referee.stop()


@pytest.fixture
async def port(ref: Referee, start_proxy: ProxyFactory) -> int:
    proxy = await start_proxy(ROUTE.format(url=ref.url))
    return port_of(proxy.url)


def by_target(answers: dict[bytes, Reply]) -> Script:
    """A script answering by the request's target (default: an answer naming it)."""

    def script(req: Received, index: int) -> Reply:
        return answers.get(req.target, Reply(body=b"answer to " + req.target))

    return script


def assert_clean(ref: Referee) -> None:
    """h11 parsed every byte the upstream received as whole requests."""
    for conn in ref.conns:
        assert conn.error is None, (conn.error, bytes(conn.raw[-300:]))


def only(answers: list[Answer]) -> Answer:
    assert len(answers) == 1, answers
    return answers[0]


# -- item 1: "chunked" anywhere in the head re-framed the body ---------------------------


async def test_x_comment_not_chunked_with_content_length_is_not_reframed(
    ref: Referee, port: int
) -> None:
    head = b"POST /svc/x HTTP/1.1\r\nHost: a\r\nX-Comment: not chunked\r\nContent-Length: 3\r\n"
    got = await exchange(port, head + b"\r\na=1", ["POST"], timeout=4)
    assert only(got.answers).status == 200
    assert_clean(ref)
    [seen] = ref.requests
    assert seen.body == b"a=1" and seen.complete
    assert seen.header("Content-Length") == b"3" and seen.header("Transfer-Encoding") is None


async def test_path_containing_chunked_is_not_reframed(ref: Referee, port: int) -> None:
    head = b"POST /svc/reports/chunked-export HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
    got = await exchange(port, head + b"hello", ["POST"], timeout=4)
    assert only(got.answers).status == 200
    assert_clean(ref)
    [seen] = ref.requests
    assert (seen.target, seen.body) == (b"/base/reports/chunked-export", b"hello")


async def test_crafted_body_cannot_smuggle_a_request_outside_the_base(
    ref: Referee, port: int
) -> None:
    # With the old re-framing the upstream read a second request out of this body.
    inner = b"GET /admin HTTP/1.1\r\nHost: internal\r\nX-Api-Key: forged\r\n\r\n"
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    head = b"PUT /svc/doc HTTP/1.1\r\nHost: a\r\nX-Note: chunked\r\nContent-Length: %d\r\n\r\n"
    got = await exchange(port, head % len(body) + body, ["PUT"], timeout=4)
    assert only(got.answers).status == 200
    assert_clean(ref)
    assert [(r.method, r.target, r.body) for r in ref.requests] == [(b"PUT", b"/base/doc", body)]


async def test_chunked_request_with_chunked_in_a_header_keeps_its_chunks(
    ref: Referee, port: int
) -> None:
    head = (
        b"POST /svc/c HTTP/1.1\r\nHost: a\r\nX-Comment: chunked\r\nTransfer-Encoding: chunked\r\n"
    )
    got = await exchange(port, head + b"\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", ["POST"], timeout=4)
    assert only(got.answers).status == 200
    assert_clean(ref)
    assert [r.body for r in ref.requests] == [b"abcde"]


# -- item 2: an answer before the body was sent kept its connection in the pool ----------


@pytest.mark.parametrize("status", [401, 403, 413])
async def test_early_answer_before_body_connection_not_reused(
    ref: Referee, port: int, status: int
) -> None:
    # The upstream answers on the head, as nginx `return` or an auth middleware does. The
    # proxy may finish sending the body and reuse the connection, or close it; it must
    # never let the next request be read as the rest of this body.
    ref.script = by_target({b"/base/upload": Reply(status=status, body=b"early", early=True)})
    body = b"B" * 1000
    reader, writer = await open_client(port)
    try:
        head = b"POST /svc/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n"
        writer.write(head + body[:10])
        await ref.wait_for(lambda: bool(ref.requests), 3)  # answered by now
        writer.write(body[10:])
        first = await read_answers(reader, ["POST"], timeout=4)
        assert (only(first.answers).status, first.answers[0].body) == (status, b"early")
        second = await exchange(port, b"GET /svc/next HTTP/1.1\r\nHost: a\r\n\r\n", ["GET"])
        assert only(second.answers).body == b"answer to /base/next"
        await ref.wait_for(lambda: any(r.target == b"/base/next" for r in ref.requests), 3)
    finally:
        writer.transport.abort()
    assert_clean(ref)
    post = next(r for r in ref.requests if r.method == b"POST")
    assert body.startswith(post.body), post.body[:100]  # never another request's bytes


async def test_early_answer_then_upstream_close_reaches_client(ref: Referee, port: int) -> None:
    ref.script = by_target(
        {b"/base/upload": Reply(status=413, body=b"too big", early=True, close=True)}
    )
    body = b"x" * 2_000_000
    head = b"POST /svc/upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
    reader, writer = await open_client(port)
    try:
        writer.write(head + body)
        got = await read_answers(reader, ["POST"], timeout=4)
    finally:
        writer.transport.abort()
    assert (only(got.answers).status, got.answers[0].body) == (413, b"too big")


async def test_early_answer_with_whole_body_sent_next_request_is_clean(
    ref: Referee, port: int
) -> None:
    # The upstream answers on the head; the proxy may finish the body and reuse, or close.
    ref.script = by_target({b"/base/a": Reply(status=403, body=b"no", early=True)})
    body = b"C" * 200_000
    head = b"POST /svc/a HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
    data = head + body + b"GET /svc/b HTTP/1.1\r\nHost: a\r\n\r\n"
    got = await exchange(port, data, ["POST", "GET"], cuts=[len(head) + 5], timeout=5)
    assert [a.body for a in got.answers][:1] == [b"no"]
    if len(got.answers) == 2:  # the proxy kept the client connection
        assert got.answers[1].body == b"answer to /base/b"
    assert_clean(ref)
    for r in ref.requests:
        assert r.target in (b"/base/a", b"/base/b")
        if r.target == b"/base/a":
            assert body.startswith(r.body)


# -- item 3: a 1xx interim answer ended the exchange -------------------------------------


@pytest.mark.parametrize("interim", [[103], [102], [102, 103]], ids=["103", "102", "102+103"])
async def test_103_early_hints_then_200_reaches_client(
    ref: Referee, port: int, interim: list[int]
) -> None:
    ref.script = by_target({b"/base/hints": Reply(interim=interim, body=FINAL)})
    data = b"GET /svc/hints HTTP/1.1\r\nHost: a\r\n\r\nGET /svc/after HTTP/1.1\r\nHost: a\r\n\r\n"
    got = await exchange(port, data, ["GET", "GET"], timeout=4)
    assert [(a.status, a.body) for a in got.answers] == [
        (200, FINAL),
        (200, b"answer to /base/after"),
    ]
    assert got.answers[0].interim == interim  # a proxy forwards 1xx (RFC 9110 15.2)
    assert_clean(ref)


async def test_unsolicited_100_then_200_reaches_client(ref: Referee, port: int) -> None:
    ref.script = by_target({b"/base/c": Reply(interim=[100], body=b"done")})
    got = await exchange(port, b"GET /svc/c HTTP/1.1\r\nHost: a\r\n\r\n", ["GET"], timeout=4)
    assert (only(got.answers).status, got.answers[0].body) == (200, b"done")


async def test_1xx_final_body_never_reaches_the_next_client(ref: Referee, port: int) -> None:
    ref.script = by_target({b"/base/one": Reply(interim=[103], body=FINAL)})
    one = await exchange(port, b"GET /svc/one HTTP/1.1\r\nHost: a\r\n\r\n", ["GET"], timeout=4)
    two = await exchange(port, b"GET /svc/two HTTP/1.1\r\nHost: a\r\n\r\n", ["GET"], timeout=4)
    assert [a.body for a in one.answers] == [FINAL]
    assert [a.body for a in two.answers] == [b"answer to /base/two"]


# -- item 4: extra bytes after a complete answer were appended to it ---------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_extra_bytes_after_answer_discarded(ref: Referee, port: int, framing: str) -> None:
    ref.script = by_target({b"/base/one": Reply(body=b"first", framing=framing, extra=SMUGGLED)})
    data = b"GET /svc/one HTTP/1.1\r\nHost: a\r\n\r\nGET /svc/two HTTP/1.1\r\nHost: a\r\n\r\n"
    got = await exchange(port, data, ["GET", "GET"], timeout=4)
    other = await exchange(port, b"GET /svc/three HTTP/1.1\r\nHost: a\r\n\r\n", ["GET"], timeout=4)
    bodies = [a.body for a in got.answers + other.answers]
    assert bodies == [b"first", b"answer to /base/two", b"answer to /base/three"]
    assert b"SMUGGLED" not in got.rest + other.rest
    # RFC 9112 6.3: the rest is discarded and that connection closed
    await asyncio.wait_for(ref.conns[0].closed.wait(), 3)


async def test_close_delimited_answer_is_relayed_whole(ref: Referee, port: int) -> None:
    ref.script = by_target({b"/base/c": Reply(body=b"z" * 70_000, framing="close")})
    data = b"GET /svc/c HTTP/1.1\r\nHost: a\r\n\r\nGET /svc/d HTTP/1.1\r\nHost: a\r\n\r\n"
    got = await exchange(port, data, ["GET", "GET"], timeout=4)
    assert got.answers[0].body == b"z" * 70_000 and got.answers[0].complete
    if len(got.answers) == 2:
        assert got.answers[1].body == b"answer to /base/d"


async def test_chunked_answer_trailers_stay_trailers(ref: Referee, port: int) -> None:
    ref.script = by_target(
        {b"/base/t": Reply(body=b"chunky body", framing="chunked", trailers=[("X-Sum", "42")])}
    )
    got = await exchange(port, b"GET /svc/t HTTP/1.1\r\nHost: a\r\n\r\n", ["GET"], timeout=4)
    answer = only(got.answers)
    assert answer.body == b"chunky body"
    assert answer.header("x-sum") is None  # never merged into the head


# -- item 5: Upgrade with a body lost the body -------------------------------------------


H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"


def assert_refused_or_forwarded(ref: Referee, answer: Answer, body: bytes) -> None:
    """JSON 501 with nothing forwarded, or the body forwarded whole without Upgrade."""
    if answer.status == 501:
        assert answer.error_code and answer.json()["error"]["code"] == answer.error_code
        assert ref.requests == []
        return
    assert answer.status == 200, (answer.status, answer.body[:200])
    [seen] = ref.requests
    assert (seen.body, seen.complete) == (body, True)
    assert seen.header("Upgrade") is None


async def test_upgrade_with_content_length_body_not_lost(ref: Referee, port: int) -> None:
    head = b"POST /svc/u HTTP/1.1\r\nHost: a\r\n" + H2C + b"Content-Length: 3\r\n\r\n"
    got = await exchange(port, head + b"a=1", ["POST"], timeout=4)
    assert not got.timed_out, "no answer: the body was waited for and lost"
    assert_refused_or_forwarded(ref, only(got.answers), b"a=1")


async def test_upgrade_with_chunked_body_not_lost(ref: Referee, port: int) -> None:
    head = b"POST /svc/u HTTP/1.1\r\nHost: a\r\n" + H2C + b"Transfer-Encoding: chunked\r\n\r\n"
    got = await exchange(port, head + b"3\r\na=1\r\n0\r\n\r\n", ["POST"], timeout=4)
    assert not got.timed_out
    assert_refused_or_forwarded(ref, only(got.answers), b"a=1")


async def test_websocket_upgrade_refused_or_tunnelled(ref: Referee, port: int) -> None:
    def script(req: Received, index: int) -> Reply:
        return Reply(framing="switch") if req.header("Upgrade") else Reply()

    ref.script = script
    reader, writer = await open_client(port)
    try:
        writer.write(
            b"GET /svc/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        async with asyncio.timeout(4):
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status == 101:  # tunnelled: bytes flow both ways
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                return
            assert status == 501, head
            assert b"x-authproxy-error" in head.lower()
            assert ref.requests == []
    finally:
        writer.transport.abort()
