"""An independent referee for the HTTP layer: h11 (python-hyper) parses both sides.

- :class:`Referee` is a raw-socket upstream. h11 parses every request it receives and
  it records, per connection, exactly what h11 saw (method, target, headers as they
  came, body bytes, trailers) and whatever h11 could not parse. Its answers are
  scripted (:class:`Reply`) and written as raw bytes, so they can be odd on purpose:
  1xx interim answers first, an answer before the request body was read, extra bytes
  after a complete answer, close-delimited bodies, chunked bodies with trailers.
- :mod:`tests.referee_client` parses what the proxy sent back to a client with h11.

The assertion in the tests is then always "what h11 saw", never what our own parser saw.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h11

Fields = list[tuple[bytes, bytes]]
#: large enough for the long-header cases; h11's default (16 KiB) would refuse them
MAX_EVENT = 1 << 20


@dataclass
class Received:
    """One request as h11 parsed it at the upstream."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: Fields  # names as they came on the wire, in order, duplicates kept
    body: bytes = b""
    trailers: Fields = field(default_factory=list)
    complete: bool = False  # h11 saw the end of its body

    def values(self, name: str) -> list[bytes]:
        key = name.lower().encode()
        return [v for n, v in self.headers if n.lower() == key]

    def header(self, name: str) -> bytes | None:
        found = self.values(name)
        return found[0] if found else None


@dataclass
class Connection:
    """One upstream connection: the requests h11 parsed on it, in order."""

    requests: list[Received] = field(default_factory=list)
    error: str | None = None  # h11's reason when it could not parse what came
    unparsed: bytes = b""  # the bytes h11 had not consumed when it gave up
    raw: bytearray = field(default_factory=bytearray)  # every byte received
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Reply:
    """How the referee answers one request."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"ok"
    #: "length" | "chunked" | "close" (the body ends when we close) | "switch" (101, then
    #: echo every byte back: a tunnel)
    framing: str = "length"
    interim: Sequence[int] = ()  # 1xx answers sent before the final one
    trailers: list[tuple[str, str]] = field(default_factory=list)  # chunked only
    early: bool = False  # answer as soon as the head is parsed, before reading the body
    close: bool = False  # close the connection after the answer
    extra: bytes = b""  # raw bytes written right after the complete answer
    hold: bool = False  # never answer (for timeout cases)


_REASONS = {100: "Continue", 102: "Processing", 103: "Early Hints"}


def encode_interim(status: int) -> bytes:
    link = b"Link: </style.css>; rel=preload\r\n" if status == 103 else b""
    reason = _REASONS.get(status, "Interim").encode()
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, link)


def encode_final(reply: Reply, method: bytes) -> bytes:
    """The final answer's bytes, framed as ``reply.framing`` says."""
    out = [b"HTTP/1.1 %d Answer\r\n" % reply.status]
    out += [f"{n}: {v}\r\n".encode("latin-1") for n, v in reply.headers]
    no_body = method == b"HEAD" or reply.status in (204, 304)
    if reply.framing == "length":
        out.append(b"Content-Length: %d\r\n" % len(reply.body))
    elif reply.framing == "chunked":
        out.append(b"Transfer-Encoding: chunked\r\n")
    if reply.close or reply.framing == "close":
        out.append(b"Connection: close\r\n")
    out.append(b"\r\n")
    if no_body:
        return b"".join(out)
    if reply.framing == "chunked":
        for i in range(0, len(reply.body), 7):
            piece = reply.body[i : i + 7]
            out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        out.append(b"0\r\n")
        out += [f"{n}: {v}\r\n".encode("latin-1") for n, v in reply.trailers]
        out.append(b"\r\n")
    else:
        out.append(reply.body)
    return b"".join(out)


Script = Callable[[Received, int], Reply]


def _default_script(req: Received, index: int) -> Reply:
    return Reply(body=b"answer to " + req.method + b" " + req.target)


class Referee:
    """A raw TCP upstream whose request parsing is done by h11. ``script(request,
    connection index)`` decides each answer; it sees the head only (body not read yet)."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or _default_script
        self.conns: list[Connection] = []
        #: every request h11 parsed, in the order it arrived (across connections)
        self.log: list[Received] = []
        self.port = 0
        self.changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Received]:
        return [r for c in self.conns for r in c.requests]

    async def start(self) -> Referee:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``cond()`` holds (re-checked whenever a connection records something)."""
        async with asyncio.timeout(timeout):
            while not cond():
                self.changed.clear()
                await self.changed.wait()

    def _note(self) -> None:
        self.changed.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        conn = Connection()
        self.conns.append(conn)
        self._note()
        try:
            await self._serve(conn, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the proxy (or stop()) ended the connection: what was seen is recorded
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.transport.abort()
            conn.closed.set()
            self._note()

    async def _serve(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        leftover = b""
        index = len(self.conns) - 1
        while True:
            h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_EVENT)
            if leftover:  # receive_data(b"") would mean EOF to h11
                h.receive_data(leftover)
            rec: Received | None = None
            reply = Reply()
            answered = False
            while True:
                try:
                    event = h.next_event()
                except h11.RemoteProtocolError as exc:
                    conn.error = str(exc)
                    conn.unparsed = h.trailing_data[0]
                    self._note()
                    return
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:  # the proxy closed; a body cut short stays incomplete
                        return
                    conn.raw += data
                    h.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    rec = Received(
                        event.method,
                        event.target,
                        event.http_version,
                        list(event.headers.raw_items()),
                    )
                    conn.requests.append(rec)
                    self.log.append(rec)
                    self._note()
                    reply = self.script(rec, index)
                    if reply.hold:
                        await reader.read()  # until the proxy gives up
                        return
                    if reply.early:
                        answered = True
                        if not await self._answer(reader, writer, reply, rec.method):
                            return
                elif isinstance(event, h11.Data):
                    assert rec is not None
                    rec.body += bytes(event.data)
                    self._note()
                elif isinstance(event, h11.EndOfMessage):
                    assert rec is not None
                    rec.trailers = list(event.headers.raw_items())
                    rec.complete = True
                    self._note()
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            assert rec is not None
            if not answered and not await self._answer(reader, writer, reply, rec.method):
                return
            leftover = h.trailing_data[0]

    async def _answer(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        reply: Reply,
        method: bytes,
    ) -> bool:
        """Write one scripted answer; False when the connection is closed after it."""
        if reply.framing == "switch":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n")
            writer.write(b"Upgrade: websocket\r\n\r\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            return False
        for status in reply.interim:
            writer.write(encode_interim(status))
            await writer.drain()
        writer.write(encode_final(reply, method) + reply.extra)
        await writer.drain()
        if reply.close or reply.framing == "close":
            with contextlib.suppress(OSError):
                writer.write_eof()
            # a lingering close, as nginx does: reading on keeps the kernel from answering
            # the proxy's unread body bytes with a reset that could destroy our answer
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    while await reader.read(65536):
                        pass
            return False
        return True
