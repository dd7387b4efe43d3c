"""The client side of one upstream connection: an asyncio.Protocol around httptools.

Why not aiohttp's ClientSession: it builds a request object, a response object, a
cookie jar lookup, a timer context and a connector slot for every request, which
costs more CPU than everything else authproxy does for a proxied request together.
A proxy needs far less: send bytes it already has, parse the answer with a
well-kept parser (httptools, the llhttp binding uvicorn uses), and stream the body
with flow control. :mod:`proxy.http1.pool` keeps these connections.

What an exchange on a connection guarantees, after aiohttp's ``client_proto``:

* 1xx interim answers (100, 102, 103) are handed to ``interim`` and the final
  answer is still awaited (RFC 9110 15.2); a 101 ends the exchange as an error.
* An answer that arrives before the request body was all sent is delivered, the
  rest of the body is not sent, and the connection is never reused (RFC 9112 9.5).
* Bytes after a complete answer are discarded and the connection closed
  (RFC 9112 6.3); so are bytes that arrive while the connection is idle.
* An answer head larger than ``MAX_HEAD`` bytes or ``MAX_FIELDS`` fields is refused.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from proxy.http1.errors import Closed, Http1Error, ProtocolError, TooLarge
from proxy.http1.flow import HIGH_WATER, LOW_WATER, Flow
from proxy.http1.response import Response

#: buffered body chunks up to this much in all are joined into one write
_JOIN_LIMIT = 64 * 1024
#: bounds on an upstream answer's head
MAX_HEAD = 64 * 1024
MAX_FIELDS = 256
#: header fields about one connection, not passed on by a proxy (RFC 9110 7.6.1)
HOP_BY_HOP = frozenset(
    h.lower().encode()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Trailers", "Transfer-Encoding", "Upgrade", "Proxy-Connection",
    )
)  # fmt: skip
#: the lengths of the names on_header looks at: a cheap pre-check per header
_LOOK_LENGTHS = frozenset(len(h) for h in HOP_BY_HOP | {b"content-length"})

Interim = Callable[[int, str, list[bytes]], None]


class Keeper(Protocol):
    """Where a connection goes back after an exchange (:class:`proxy.http1.pool.Pool`)."""

    def put(self, conn: Connection) -> None:
        """Keep ``conn`` for the next exchange (its answer was read to the end)."""

    def forget(self, conn: Connection) -> None:
        """``conn`` is closed: never hand it out again."""


class Connection(Flow):
    """One keep-alive connection. Parser callbacks run inside ``data_received``."""

    def __init__(self, pool: Keeper) -> None:
        super().__init__()
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        #: when it went back to the pool (loop time)
        self.idle_since = 0.0
        #: an answer's head arrived on this connection for the current exchange
        self.got_answer = False
        #: the request body is being sent: an answer now is an early one
        self.sending = False
        self.early = False
        #: an exchange is running (between start() and the end of its answer)
        self._active = False
        self.interim: Interim | None = None
        self.on_early: Callable[[], None] | None = None
        self._head: asyncio.Future[Response] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: Exception | None = None
        self._keep_alive = True
        self._skip_body = False
        self._got_head = False
        self._in_interim = False
        self._new_head()

    def _new_head(self) -> None:
        """Forget the head read so far: a new exchange, or the final answer after a 1xx."""
        #: the fields as the pieces of their lines (see Response.lines)
        self._lines: list[bytes] = []
        self._length: bytes | None = None
        self._connection: list[bytes] | None = None
        self._reason = b""
        self._close_delimited = True
        self._head_bytes = 0
        self._fields = 0

    def gone(self) -> Exception:
        return Closed("upstream closed the connection")

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        if not self._active:
            # Nothing was asked: whatever this is, the connection is out of step.
            self._keep_alive = False
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if not self._complete:
                self._fail(ProtocolError("upstream switched protocols; not supported"))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Http1Error):
                self._fail(cause)
            else:
                self._fail(ProtocolError("malformed answer", detail="malformed"))
        except httptools.HttpParserError as exc:
            if self._complete:
                # Bytes after a complete answer (RFC 9112 6.3): dropped with the connection.
                self._keep_alive = False
                self.abort()
            else:
                msg = f"upstream sent a malformed answer ({exc})"
                self._fail(ProtocolError(msg, detail="malformed"))
        else:
            if not self._got_head and not self.closed:
                # httptools buffers an unfinished head: all of ``data`` belongs to it.
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD:
                    self._fail(TooLarge("the upstream's answer head is too large"))

    def eof_received(self) -> bool | None:
        # Only a body framed by neither Content-Length nor chunked encoding ends at EOF.
        # (httptools would call any body complete here, even one short of its length.)
        if self._got_head and not self._complete and self._close_delimited:
            self._complete = True
            self._keep_alive = False
            self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = True
        self.pool.forget(self)
        if not self._complete:
            self._fail(Closed("upstream closed the connection mid-answer"))
        self._wake_writer()

    # -- httptools callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            # A second answer, or bytes that look like one, after the complete one.
            self._keep_alive = False
            raise ProtocolError("bytes after the end of the answer")

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._got_head:
            return  # a trailer field: the answer's head went out already
        self._fields += 1
        if self._fields > MAX_FIELDS:
            raise TooLarge("the upstream's answer has too many header fields")
        if len(name) in _LOOK_LENGTHS:
            key = name.lower()
            if key == b"content-length":
                self._close_delimited = False
                self._length = value
            elif key in HOP_BY_HOP:
                if key == b"transfer-encoding" and b"chunked" in value.lower():
                    self._close_delimited = False
                elif key == b"connection":
                    if self._connection is None:
                        self._connection = [value]
                    else:
                        self._connection.append(value)
                return
        self._lines += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer: pass it on, then wait for the final one.
            interim = self.interim
            if interim is not None:
                interim(status, self._reason.decode("latin-1"), self._lines)
            self._in_interim = True
            self._new_head()
            return
        self._keep_alive = self.parser.should_keep_alive()
        self._got_head = True
        if self.sending:
            # Answered before the body was all sent (RFC 9112 9.5): stop sending it,
            # and never reuse the connection (the upstream would read the next
            # request as the rest of this body).
            self.early = True
            self._keep_alive = False
            self._wake_writer()
            if self.on_early is not None:
                self.on_early()
        if status in (204, 304):
            self._close_delimited = False
        head = self._head
        if head is not None and not head.done():
            reason = self._reason.decode("latin-1")
            head.set_result(
                Response(self, status, reason, self._lines, self._length, self._connection)
            )
        if self._skip_body:
            # A HEAD answer has no body whatever its Content-Length says; llhttp cannot be
            # told so from here, so this connection is not reused.
            self._keep_alive = False
            self._complete = True
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self._skip_body:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self.read_paused:
            self.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._in_interim:
            self._in_interim = False  # the end of a 1xx: the final answer follows
            return
        self._complete = True
        self._wake()

    # -- the exchange -------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
            head.exception()  # retrieved: whoever awaits still gets it, nobody else warns
        self._wake()
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def start(self, skip_body: bool) -> asyncio.Future[Response]:
        loop = self._loop
        if loop is None:
            loop = self._get_loop()
        head = self._head = loop.create_future()
        self._new_head()
        if self._chunks:
            self._chunks.clear()
        self._buffered = 0
        self._complete = False
        self._error = None
        self._skip_body = skip_body
        self._got_head = False
        self._active = True
        self.early = False
        self.got_answer = False
        return head

    def send(self, data: bytes) -> None:
        """Write ``data``; the caller awaits ``drain()`` when ``write_paused`` is set."""
        transport = self.transport
        if transport is None or self.closed:
            raise Closed("upstream connection is closed")
        transport.write(data)

    async def write(self, data: bytes) -> None:
        self.send(data)
        if self.write_paused:
            await self.drain()

    async def read_chunk(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self.read_paused and self._buffered < LOW_WATER:
                    self.resume_reading()
                return chunk
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self.wait()

    def read_ready(self) -> tuple[bytes, bool]:
        """What of the body has arrived and was not read yet (see Response.read_ready),
        and whether that was the rest of it."""
        chunks = self._chunks
        if not chunks:
            return b"", self._complete
        if len(chunks) == 1 or self._buffered > _JOIN_LIMIT:
            data = chunks.popleft()
            self._buffered -= len(data)
        else:
            # Several small chunks (a chunked answer): one write instead of several.
            data = b"".join(chunks)
            chunks.clear()
            self._buffered = 0
        if self.read_paused and self._buffered < LOW_WATER:
            self.resume_reading()
        return data, self._complete and not chunks

    def finish(self) -> None:
        self._active = False
        self.interim = self.on_early = None
        if self._complete and self._keep_alive and not self.closed and self._error is None:
            self.reused = True
            self.pool.put(self)
        else:
            self.abort()

    def abort(self) -> None:
        self._active = False
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True
        self.pool.forget(self)


__all__ = ["HOP_BY_HOP", "Connection", "Interim", "Keeper"]
