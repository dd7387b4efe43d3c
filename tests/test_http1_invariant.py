"""Issue 12: the framing invariant, driven by hypothesis and judged by h11 at both ends.

The upstream receives exactly the request the client framed (method, path joined under
the route's base, the client's end-to-end headers in order plus only the proxy's own,
identical body bytes), and the client exactly the answer the upstream framed, with no
byte crossing from one exchange to another, also when clients pipeline and share pooled
upstream connections. Requests the proxy refuses get a JSON contract error and never
reach the upstream.

One proxy and one referee serve every example (an event loop in a thread), so pooled
connections carry over from example to example, as they would in production.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from proxy import config as configmod
from proxy.app import Proxy, create_app
from tests.referee import Received, Referee, Reply
from tests.referee_client import ROUTE, Answers, open_client, port_of, read_answers, write_split

T = TypeVar("T")
#: bounded for CI: no example database, a fixed seed, no shrinking (a failing example
#: waits for deadlines, and shrinking would repeat that hundreds of times)
BOUNDED = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"
#: header names the proxy itself sets on the upstream request
PROXY_OWN = {
    b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id",
    b"x-api-key", b"content-length", b"transfer-encoding",
}  # fmt: skip
WORDS = ["chunked", "Content-Length: 5", "Transfer-Encoding: chunked", "Upgrade", "h2c",
         "Expect", "100-continue", "Host", "a=1", "0", "close", "keep-alive", "x"]  # fmt: skip
NAMES = ["X-Comment", "X-Note", "User-Agent", "Accept", "Cache-Control", "X-Chunked"]
_ids = itertools.count(1)


class Harness:
    """The proxy and the referee, on an event loop of their own in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.replies: dict[bytes, Reply] = {}
        self.ref = self.run(self._referee())
        cfg = configmod.parse(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n" + ROUTE.format(url=self.ref.url),
            {},
        )
        self.proxy: Proxy = create_app(cfg)
        self.run(self.proxy.start())
        self.port = port_of(self.proxy.url)

    async def _referee(self) -> Referee:
        return await Referee(self._script).start()

    def _script(self, req: Received, index: int) -> Reply:
        case = req.header("X-Case") or b""
        return self.replies.get(case, Reply(body=b"no case " + case))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.proxy.stop())
        self.run(self.ref.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


@dataclass
class Req:
    """One request as the client frames it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes | None
    chunked: bool
    chunk: int
    case: bytes = b""
    bad: str | None = None  # why the proxy must refuse it
    reply: Reply = field(default_factory=Reply)

    def encode(self) -> bytes:
        lines = [f"{self.method} /svc/{self.path} HTTP/1.1", f"X-Case: {self.case.decode()}"]
        if self.bad != "missing Host":
            lines.append("Host: client.example")
        if self.bad == "duplicate Host":
            lines.append("Host: other.example")
        lines += [f"{n}: {v}" for n, v in self.headers]
        if self.bad == "two different Content-Length":
            lines += ["Content-Length: 1", "Content-Length: 2"]
        if self.bad == "space before colon":
            lines.append("X-Bad : v")
        body = b""
        if self.body is not None and self.bad is None:
            if self.chunked:
                lines.append("Transfer-Encoding: chunked")
                for i in range(0, len(self.body), self.chunk):
                    piece = self.body[i : i + self.chunk]
                    body += b"%x\r\n%s\r\n" % (len(piece), piece)
                body += b"0\r\n\r\n"
            else:
                lines.append(f"Content-Length: {len(self.body)}")
                body = self.body
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


segment = st.text("abcXYZ019-_", min_size=1, max_size=8) | st.sampled_from(
    ["chunked", "chunked-export", "Content-Length", "Upgrade", "Expect", "Host"]
)
value = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3).map(" ".join)


@st.composite
def requests(draw: st.DrawFn, bad: bool = False) -> Req:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]))
    path = "/".join(draw(st.lists(segment, max_size=3)))
    if draw(st.booleans()):
        path += "?q=" + draw(segment) + "&chunked=1"
    headers = draw(st.lists(st.tuples(st.sampled_from(NAMES), value), max_size=3))
    has_body = method not in ("GET", "HEAD", "OPTIONS") and draw(st.booleans())
    body = draw(st.binary(max_size=3000)) if has_body else None
    req = Req(method, path, headers, body, draw(st.booleans()), draw(st.integers(1, 900)))
    if bad:
        req.bad = draw(
            st.sampled_from(
                [
                    "missing Host",
                    "duplicate Host",
                    "two different Content-Length",
                    "space before colon",
                ]  # fmt: skip
            )
        )
    return req


@st.composite
def replies(draw: st.DrawFn, req: Req, odd: bool) -> Reply:
    reply = Reply(
        status=draw(st.sampled_from([200, 201, 404, 500])),
        headers=[("X-Answer-Case", req.case.decode())],
        body=req.case + b":" + draw(st.binary(max_size=2000)),
        framing=draw(st.sampled_from(["length", "chunked", "close"])) if odd else "length",
    )
    if odd:
        reply.interim = draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2))
        reply.early = req.body is not None and draw(st.booleans())
        reply.close = draw(st.booleans())
        reply.extra = SMUGGLED if reply.framing != "close" and draw(st.booleans()) else b""
        if reply.framing == "chunked" and draw(st.booleans()):
            reply.trailers = [("X-Trailer-Case", req.case.decode())]
    return reply


@st.composite
def scenarios(draw: st.DrawFn, odd: bool, clients: int, per_client: int) -> list[list[Req]]:
    out: list[list[Req]] = []
    for _ in range(draw(st.integers(1, clients))):
        pipeline = draw(st.lists(requests(), min_size=1, max_size=per_client))
        if odd and draw(st.integers(0, 4)) == 0:
            pipeline.append(draw(requests(bad=True)))
        for req in pipeline:
            req.case = b"c%d" % next(_ids)
            req.reply = draw(replies(req, odd))
        out.append(pipeline)
    return out


async def _client(port: int, pipeline: list[Req], cuts: list[int]) -> Answers:
    data = b"".join(r.encode() for r in pipeline)
    reader, writer = await open_client(port)
    # written while reading: a proxy that stops reading must not deadlock the test
    sender = asyncio.ensure_future(write_split(writer, data, cuts))
    try:
        return await read_answers(reader, [r.method for r in pipeline], timeout=5)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.transport.abort()


async def _run(port: int, scenario: list[list[Req]], cuts: list[int]) -> list[Answers]:
    return list(await asyncio.gather(*(_client(port, p, cuts) for p in scenario)))


def check(h: Harness, scenario: list[list[Req]], cuts: list[int]) -> None:
    for pipeline in scenario:
        for req in pipeline:
            h.replies[req.case] = req.reply
    ref = h.ref
    broken = {id(c) for c in ref.conns if c.error is not None}  # earlier examples' failures
    results = h.run(_run(h.port, scenario, cuts))

    def settled() -> bool:  # every upstream body finished, or its connection closed
        return all(
            c.closed.is_set() or not c.requests or c.requests[-1].complete for c in ref.conns
        )

    h.run(ref.wait_for(settled, 3))
    seen: dict[bytes, list[tuple[Received, bool]]] = {}
    for conn in h.ref.conns:
        if id(conn) not in broken:
            assert conn.error is None, (conn.error, bytes(conn.raw[-400:]))
        for i, rec in enumerate(conn.requests):
            last = i == len(conn.requests) - 1
            seen.setdefault(rec.header("X-Case") or b"", []).append((rec, last))
    for pipeline, got in zip(scenario, results, strict=True):
        assert not got.timed_out, ("a hang", [r.case for r in pipeline], got)
        assert got.error is None, (got.error, got.rest[:300])
        assert b"SMUGGLED" not in got.rest
        for n, req in enumerate(pipeline):
            if n >= len(got.answers):
                assert got.closed, "answers missing on a connection left open"
                assert req.case not in seen, "forwarded, yet never answered"
                continue
            check_answer(req, got.answers[n])
            check_upstream(req, seen.get(req.case, []), got.answers[n].status)
    for pipeline in scenario:
        for req in pipeline:
            del h.replies[req.case]


def check_answer(req: Req, answer: Any) -> None:
    if req.bad is not None:
        assert 400 <= answer.status < 500, (req.bad, answer.status)
        assert answer.error_code
        if req.method != "HEAD":  # an answer to HEAD has no body (RFC 9110 9.3.2)
            assert answer.json()["error"]["code"] == answer.error_code
        return
    reply = req.reply
    assert answer.status == reply.status, (req.case, answer.status, answer.body[:200])
    assert answer.header("x-answer-case") == req.case  # the answer to this very request
    assert answer.body == (b"" if req.method == "HEAD" else reply.body)
    assert answer.complete
    assert set(answer.interim) <= set(reply.interim) | {100}
    assert answer.header("x-trailer-case") is None  # trailers never merged into the head


def check_upstream(req: Req, seen: list[tuple[Received, bool]], status: int) -> None:
    if req.bad is not None:
        assert seen == [], f"refused ({req.bad}), yet it reached the upstream"
        return
    assert len(seen) == 1, (req.case, len(seen))
    rec, last = seen[0]
    assert rec.method.decode() == req.method
    assert rec.target == f"/base/{req.path}".encode()
    sent = [(n.encode(), v.encode()) for n, v in [("X-Case", req.case.decode()), *req.headers]]
    assert [(n, v) for n, v in rec.headers if n.lower() not in PROXY_OWN] == sent
    framing = [
        n.lower() for n, _ in rec.headers if n.lower() in (b"content-length", b"transfer-encoding")
    ]
    assert len(framing) <= 1, rec.headers
    assert len(rec.values("host")) == 1 and rec.trailers == []
    body = req.body or b""
    if rec.complete:
        assert rec.body == body
    else:  # only an early answer lets the proxy stop sending, and then it closes
        assert req.reply.early and last and body.startswith(rec.body)


cut_points = st.lists(st.integers(1, 4000), max_size=4)


@settings(BOUNDED, max_examples=120)
@given(scenario=scenarios(odd=False, clients=1, per_client=3), cuts=cut_points)
def test_requests_arrive_exactly_as_framed(
    harness: Harness, scenario: list[list[Req]], cuts: list[int]
) -> None:
    check(harness, scenario, cuts)


@settings(BOUNDED, max_examples=120)
@given(scenario=scenarios(odd=True, clients=1, per_client=2), cuts=cut_points)
def test_odd_answers_reach_only_their_client(
    harness: Harness, scenario: list[list[Req]], cuts: list[int]
) -> None:
    check(harness, scenario, cuts)


@settings(BOUNDED, max_examples=60)
@given(scenario=scenarios(odd=True, clients=4, per_client=3), cuts=cut_points)
def test_pipelined_clients_sharing_the_pool_never_cross(
    harness: Harness, scenario: list[list[Req]], cuts: list[int]
) -> None:
    check(harness, scenario, cuts)
