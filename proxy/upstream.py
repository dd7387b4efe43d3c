"""A lean HTTP/1.1 client for the hot path: pooled keep-alive connections to one upstream.

Why not aiohttp's ClientSession here: it builds a request object, a response object,
a cookie jar lookup, a timer context and a connector slot for every request, which
costs more CPU than everything else authproxy does for a proxied request together.
A proxy needs far less: send bytes it already has, parse the answer with a
well-kept parser (httptools, the llhttp binding uvicorn uses), and stream the body
with flow control. Token endpoints use it too (:mod:`proxy.flows.client`).

Concurrency: an :class:`UpstreamPool` is used by the tasks of one event loop. A
connection serves one exchange at a time and returns to the pool only after its
answer was read to the end with keep-alive allowed.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

import httptools

#: pause reading from the upstream when this much of its answer is unread
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
#: buffered body chunks up to this much in all are joined into one write
_JOIN_LIMIT = 64 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
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


class UpstreamError(Exception):
    """The exchange failed. ``connect`` tells a refused connection from a broken one;
    ``tls`` a failed handshake; ``detail`` is the reason alone (for other wording)."""

    def __init__(
        self,
        message: str,
        *,
        connect: bool = False,
        timeout: bool = False,
        tls: bool = False,
        too_large: bool = False,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.connect = connect
        self.timeout = timeout
        self.tls = tls
        self.too_large = too_large
        self.detail = detail


class UpstreamResponse:
    """Status and headers of an answer, and its body as a stream of chunks."""

    __slots__ = ("status", "reason", "lines", "content_length", "connection", "_conn", "_done")

    def __init__(self, conn: _Connection, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        #: the fields but the hop-by-hop ones (RFC 9110 7.6.1), in order, duplicates
        #: kept, as the pieces of their lines: name, b": ", value, b"\r\n", name, ...
        self.lines = conn._lines
        #: the (last) Content-Length value as sent, if any
        self.content_length = conn._length
        #: the values of the Connection fields, if any
        self.connection = conn._connection
        self._conn = conn
        self._done = False

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The fields but the hop-by-hop ones, as (name, value) pairs."""
        lines = self.lines
        return list(zip(lines[0::4], lines[2::4], strict=True))

    @property
    def body_ready(self) -> bool:
        """Some of the body (or its end) has arrived already: reading will not wait."""
        conn = self._conn
        return bool(conn._chunks) or conn._complete

    @property
    def at_end(self) -> bool:
        """All of the body was read: the next read returns b''."""
        conn = self._conn
        return conn._complete and not conn._chunks

    async def read(self) -> bytes:
        """The next chunk of the body, or b'' at its end. Raises UpstreamError if cut."""
        return await self._conn.read_chunk()

    def read_buffered(self) -> bytes:
        """What of the body has arrived and was not read yet, without waiting: all of
        it when that is little (``_JOIN_LIMIT``), else its first chunk."""
        return self._conn.take_buffered()

    def read_ready(self) -> tuple[bytes, bool]:
        """:meth:`read_buffered`, and whether that was the rest of the body (``at_end``)."""
        conn = self._conn
        return conn.take_buffered(), conn._complete and not conn._chunks

    async def read_all(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await self.read()
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if size > limit:
                raise UpstreamError("answer larger than expected", too_large=True)
            parts.append(chunk)

    def release(self) -> None:
        """Done with the answer: reuse the connection if the answer was complete."""
        if not self._done:
            self._done = True
            self._conn.finish()

    def close(self) -> None:
        """Done, and the connection must not be reused (answer not read to the end)."""
        if not self._done:
            self._done = True
            self._conn.abort()


class _Connection(asyncio.Protocol):
    """One keep-alive connection. Parser callbacks run inside ``data_received``."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        #: an answer's head arrived on this connection for the current exchange
        self.got_answer = False
        self._lines: list[bytes] = []
        self._length: bytes | None = None
        self._connection: list[bytes] | None = None
        self._reason = b""
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._keep_alive = True
        self._skip_body = False
        self._got_head = False
        self._close_delimited = True

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("upstream switched protocols; not supported"))
        except httptools.HttpParserError as exc:
            self._fail(
                UpstreamError(f"upstream sent a malformed answer ({exc})", detail="malformed")
            )

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
        self.pool._forget(self)
        if not self._complete:
            self._fail(UpstreamError("upstream closed the connection mid-answer"))
        waiter = self._drain
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamError("upstream closed the connection"))
            waiter.exception()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks ---------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
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
        if 100 <= status < 200:
            # An interim answer (102, 103): wait for the final one.
            self._lines = []
            self._length = None
            self._connection = None
            self._reason = b""
            self._close_delimited = True
            return
        self._keep_alive = self.parser.should_keep_alive()
        self._got_head = True
        if status in (204, 304):
            self._close_delimited = False
        head = self._head
        if head is not None and not head.done():
            reason = self._reason.decode("latin-1")
            head.set_result(UpstreamResponse(self, status, reason))
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
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        waiter = self._waiter  # _wake(), inline
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        self._complete = True
        waiter = self._waiter  # _wake(), inline
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the exchange -------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        # Kept from connection_made: asyncio.get_running_loop() is a getpid() syscall.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def start(self, skip_body: bool) -> asyncio.Future[UpstreamResponse]:
        loop = self._loop
        if loop is None:
            loop = self._get_loop()
        head = self._head = loop.create_future()
        self._lines = []
        self._length = None
        self._connection = None
        self._reason = b""
        if self._chunks:
            self._chunks.clear()
        self._buffered = 0
        self._complete = False
        self._error = None
        self._skip_body = skip_body
        self._got_head = False
        self._close_delimited = True
        return head

    def send(self, data: bytes) -> None:
        """Write ``data``; the caller awaits ``drain()`` when ``_write_paused`` is set."""
        transport = self.transport
        if transport is None or self.closed:
            raise UpstreamError("upstream connection is closed")
        transport.write(data)

    async def drain(self) -> None:
        if self._write_paused:
            self._drain = self._get_loop().create_future()
            await self._drain

    async def write(self, data: bytes) -> None:
        self.send(data)
        if self._write_paused:
            await self.drain()

    async def read_chunk(self) -> bytes:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < _LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self._get_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def take_buffered(self) -> bytes:
        chunks = self._chunks
        if not chunks:
            return b""
        if len(chunks) == 1 or self._buffered > _JOIN_LIMIT:
            data = chunks.popleft()
            self._buffered -= len(data)
        else:
            # Several small chunks (a chunked answer): one write instead of several.
            data = b"".join(chunks)
            chunks.clear()
            self._buffered = 0
        if self._paused and self._buffered < _LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    def finish(self) -> None:
        if self._complete and self._keep_alive and not self.closed and self._error is None:
            self.reused = True
            self.pool._idle.append(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True
        self.pool._forget(self)


class Opener(Protocol):
    """Opens connections as ``loop.create_connection`` does: an egress proxy's tunnel
    (:class:`proxy.tunnel.Tunnel`). ``name`` says what is in between, for messages."""

    name: str

    @property
    def open_connection(self) -> Callable[..., Awaitable[tuple[Any, Any]]]: ...


class UpstreamPool:
    """Keep-alive connections to one origin (``host``, ``port``, optional TLS),
    directly or through ``opener``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        max_idle: int = 256,
        opener: Opener | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.opener = opener
        self._idle: collections.deque[_Connection] = collections.deque()
        self._all: set[_Connection] = set()

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        opener = self.opener
        conn: _Connection
        try:
            _, conn = await asyncio.wait_for(
                (loop.create_connection if opener is None else opener.open_connection)(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            via = "" if opener is None else f" through egress proxy {opener.name}"
            raise UpstreamError(
                f"connecting to the upstream{via} took longer than {self.connect_timeout:g}s",
                connect=True,
                timeout=True,
            ) from None
        except ssl.SSLError as exc:
            reason = exc.reason or type(exc).__name__
            raise UpstreamError(
                f"TLS with the upstream failed ({reason})", connect=True, tls=True, detail=reason
            ) from exc
        except OSError as exc:
            # uvloop's strerror names the address; the errno alone says what happened
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            raise UpstreamError(
                f"cannot connect to the upstream ({reason})", connect=True, detail=reason
            ) from exc
        self._all.add(conn)
        return conn

    def _take(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # most recently used: least likely to be stale
            if not conn.closed:
                return conn
        return None

    async def request(
        self,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        *,
        chunked: bool,
    ) -> UpstreamResponse:
        """Send ``head`` (request line and headers, ending in a blank line) and the body.

        ``body`` bytes are sent as they are (the head carries their Content-Length);
        an iterator is streamed, in chunked encoding when ``chunked``. A request whose
        pooled connection turns out to be closed before any answer arrived is sent
        again on a new connection, only when that cannot duplicate it: an idempotent
        method with a body still in hand.
        """
        conn = self._take()
        if conn is not None and (body is None or isinstance(body, bytes)):
            # The common case, inline (what _exchange does for a body in hand): one
            # coroutine and one future per request.
            answer = conn.start(skip_body=method == "HEAD")
            conn.got_answer = False
            try:
                conn.send(head + body if body else head)
                if conn._write_paused:
                    await conn.drain()
                try:
                    response = await answer
                except BaseException:
                    conn.abort()
                    raise
            except UpstreamError:
                if not (method in _IDEMPOTENT and conn.reused and not conn.got_answer):
                    raise
            else:
                conn.got_answer = True
                return response
            conn = await self._connect()
            return await self._exchange(conn, method, head, body, chunked)
        retry_ok = method in _IDEMPOTENT and not isinstance(body, AsyncIterator)
        if conn is None:
            conn = await self._connect()
            return await self._exchange(conn, method, head, body, chunked)
        try:
            return await self._exchange(conn, method, head, body, chunked)
        except UpstreamError:
            if not (retry_ok and conn.reused and not conn.got_answer):
                raise
        conn = await self._connect()
        return await self._exchange(conn, method, head, body, chunked)

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        chunked: bool,
    ) -> UpstreamResponse:
        answer = conn.start(skip_body=method == "HEAD")
        conn.got_answer = False
        if body is None or isinstance(body, bytes):
            await conn.write(head + body if body else head)
        else:
            await conn.write(head)
            try:
                async for chunk in body:
                    if answer.done():
                        break  # the upstream answered early (say 413): stop sending
                    if not chunk:
                        continue
                    if chunked:
                        await conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                    else:
                        await conn.write(chunk)
                else:
                    if chunked:
                        await conn.write(b"0\r\n\r\n")
            except BaseException:
                conn.abort()
                raise
        try:
            response = await answer
        except BaseException:
            conn.abort()
            raise
        conn.got_answer = True
        return response

    def close(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
        self._all.clear()
