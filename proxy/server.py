"""A lean HTTP/1.1 server for the proxy port: an asyncio.Protocol around httptools.

Why not aiohttp's server here: per request it builds a message object, a request
object, a response object with its own header multidict, a payload stream and a
handler task, and it formats headers through several layers. That was about a
third of the proxy's CPU. The proxy needs far less: the parser's callbacks
(httptools, the llhttp binding uvicorn uses; never hand-written parsing) fill in
one :class:`Request`, one task per connection runs the handler for each request
in order, and an answer goes out as bytes in as few writes as possible. The admin
port runs another instance with its own handler. See :mod:`proxy.upstream` for the
client side, written in the same style.

Flow control both ways: reading pauses while much of a request body is unread (or
many pipelined requests wait), and writing an answer waits for the transport to
drain. A client that goes away makes the handler's reads and writes raise
ConnectionError, so the handler frees its upstream connection.
"""

from __future__ import annotations

import asyncio
import collections
import http
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar, cast
from urllib.parse import unquote

import httptools
from multidict import CIMultiDict

from proxy.errors import BadRequest, ProxyError, error_answer

log = logging.getLogger("authproxy.server")

#: pause reading from the client when this much of its request body is unread
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
#: pause reading when this many pipelined requests wait for their turn
_MAX_QUEUED = 8
#: how long a closing connection keeps reading (and discarding) so that the client
#: sees its answer instead of a reset caused by unread data
_LINGER = 2.0
#: the listen queue (aiohttp's default, which this server replaced)
_BACKLOG = 128
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: header names (lowercased) the parser's callback notes, by length: a cheap pre-check
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_EXPECT = b"expect"
_CONNECTION = b"connection"
_X_REQUEST_ID = b"x-request-id"
_NOTED_LENGTHS = frozenset(
    len(n) for n in (_CONTENT_LENGTH, _TRANSFER_ENCODING, _EXPECT, _CONNECTION, _X_REQUEST_ID)
)

Handler = Callable[["Request"], Awaitable[None]]


_TOO_LONG = "the request line or a header field is too long"


class _HeadTooLarge(Exception):
    """The request line or a header field is longer than ``max_header_size``."""


class _Refused(Exception):
    """A request head the proxy will not forward; the message says why."""


def _status_line(status: int, reason: str) -> bytes:
    if not reason:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("latin-1", "replace"))


#: status lines by (status, reason); upstreams send the same few
_STATUS_LINES: dict[tuple[int, str], bytes] = {}

#: request ids: a random 64-bit start, counted up (os.urandom per request is a syscall)
_ids = itertools.count(int.from_bytes(os.urandom(8), "big"))


def new_request_id() -> str:
    """A fresh request id for the logs: 16 hex digits, unique within this process and,
    from its random start, across processes. (Not a secret: a client may choose its own.)"""
    return "%016x" % (next(_ids) & 0xFFFFFFFFFFFFFFFF)


K = TypeVar("K")
V = TypeVar("V")


class Deadlines(Generic[K, V]):
    """Many deadlines on one loop timer.

    ``add(delay, key, value)`` calls ``fire(key, value)`` once ``delay`` seconds have
    passed, unless ``key`` was popped first from the dict it returns (one per delay).
    Arming and cancelling a uvloop timer per request costs several microseconds; a
    dict entry a fraction of one. Deadlines of one delay come due in the order they
    were added, which is their dict's order: the timer is armed for the first of the
    earliest ones, and when it fires, only the entries due are looked at.
    """

    __slots__ = ("loop", "_fire", "_queues", "_armed", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[K, V], None]) -> None:
        self.loop = loop
        self._fire = fire
        self._queues: dict[float, dict[K, tuple[float, V]]] = {}
        #: when the timer fires (inf: not armed)
        self._armed = float("inf")
        self._timer: asyncio.TimerHandle | None = None

    def add(self, delay: float, key: K, value: V) -> dict[K, tuple[float, V]]:
        when = self.loop.time() + delay
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = {}
        queue[key] = (when, value)
        if when < self._armed:
            self._arm(when)
        return queue

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = when
        self._timer = self.loop.call_at(when, self._due)

    def _due(self) -> None:
        self._timer = None
        self._armed = float("inf")
        now = self.loop.time()
        first = float("inf")
        for queue in list(self._queues.values()):
            while queue:
                key = next(iter(queue))
                when, value = queue[key]
                if when > now:
                    first = min(first, when)
                    break
                del queue[key]
                self._fire(key, value)
        if first < self._armed:
            self._arm(first)


class Request:
    """One request: its head as parsed, its body as a stream, and its answer's writer.

    Attribute names follow aiohttp's ``BaseRequest`` where they overlap (``method``,
    ``raw_path``, ``path``, ``headers``, ``raw_headers``, ``remote``,
    ``content_length``, ``body_exists``, ``content``, ``read()``, ``transport``).
    """

    __slots__ = (
        "method", "raw_path", "raw_headers", "version_10", "keep_alive", "content_length",
        "chunked", "expect_continue", "request_id", "connection", "status", "error_code",
        "started", "finished", "task", "_conn", "_chunks", "_buffered", "_complete", "_done",
        "_error", "_out_chunked", "_headers",
    )  # fmt: skip

    def __init__(self, conn: _Connection, method: str, raw_path: str) -> None:
        self.method = method
        #: the request target exactly as sent (path and query, percent-encoded)
        self.raw_path = raw_path
        #: (name, value) pairs as received, in order, duplicates kept
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.version_10 = False
        self.keep_alive = True
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        #: the client's X-Request-Id, if it sent one
        self.request_id: str | None = None
        #: the values of the client's Connection headers
        self.connection: list[bytes] | None = None
        #: the answer's status once started; 0 when none was sent (client gone)
        self.status = 0
        #: the answer's X-Authproxy-Error code, for the access log
        self.error_code = ""
        self.started = False
        self.finished = False
        #: the task that runs the handler for this request (its connection's)
        self.task = conn._task
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        #: the handler is done with this request: the rest of its body is dropped
        self._done = False
        self._error: Exception | None = None
        self._out_chunked = False
        self._headers: CIMultiDict[str] | None = None

    # -- the head ------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The path, percent-decoded, without the query string."""
        return unquote(self.raw_path.partition("?")[0])

    @property
    def headers(self) -> CIMultiDict[str]:
        """The headers as a case-insensitive multidict (built on first use)."""
        if self._headers is None:
            self._headers = CIMultiDict(
                (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                for n, v in self.raw_headers
            )
        return self._headers

    def get_header(self, lower_name: bytes) -> bytes | None:
        """The first value of a header, by its lowercased name, as raw bytes."""
        for name, value in self.raw_headers:
            if len(name) == len(lower_name) and name.lower() == lower_name:
                return value
        return None

    @property
    def remote(self) -> str | None:
        """The client's IP address; None on a unix socket."""
        return self._conn.peer

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._conn.transport

    @staticmethod
    def new_id() -> str:
        """A fresh request id (see :func:`new_request_id`)."""
        return new_request_id()

    @property
    def client_gone(self) -> bool:
        """The client's connection is closed (or closing): no answer can reach it."""
        conn = self._conn
        return conn.lost or conn.transport is None or conn.transport.is_closing()

    @property
    def body_exists(self) -> bool:
        return self.chunked or bool(self.content_length)

    # -- the body ------------------------------------------------------------------

    @property
    def content(self) -> Request:
        """The body stream (``readany()``, ``at_eof()``, ``read()``): the request itself."""
        return self

    def at_eof(self) -> bool:
        return self._complete and not self._chunks

    async def readany(self) -> bytes:
        """The next chunk of the body, or b'' at its end.

        Raises ConnectionError when the client went away before the end, and
        BadRequest when the rest of the body turned out malformed.
        """
        conn = self._conn
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if conn.read_paused:
                    conn.maybe_resume()
                return chunk
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            if conn.lost:
                raise ConnectionResetError("the client closed the connection mid-body")
            if self.expect_continue:
                # The body is wanted now: only now ask the client to send it.
                self.expect_continue = False
                conn.write(_CONTINUE)
            await conn.wait()

    async def read(self) -> bytes:
        """The whole body."""
        parts: list[bytes] = []
        while True:
            chunk = await self.readany()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    # -- the answer ----------------------------------------------------------------

    def start(
        self,
        status: int,
        reason: str,
        headers: Iterable[tuple[bytes, bytes]],
        *,
        length: int | None,
        body: bytes = b"",
        end: bool = False,
        close: bool = False,
    ) -> None:
        """Write the answer's head, with ``body`` (its first part) in the same write.

        ``headers`` are written as given, in order; ``length`` is the Content-Length
        among them, or None for a body framed here (chunked, or up to the close for
        an HTTP/1.0 client). ``end`` finishes the answer with this write.
        ``close`` ends the connection after this answer.
        """
        lines: list[bytes] = []
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        self.start_lines(status, reason, lines, length=length, body=body, end=end, close=close)

    def start_lines(
        self,
        status: int,
        reason: str,
        lines: list[bytes],
        *,
        length: int | None,
        body: bytes = b"",
        end: bool = False,
        close: bool = False,
    ) -> None:
        """:meth:`start` with the header fields already rendered: ``lines`` holds
        the pieces of their ``Name: value`` lines (left as it is)."""
        conn = self._conn
        if self.started:
            raise RuntimeError("the answer was started already")
        self.started = True
        self.status = status
        line = _STATUS_LINES.get((status, reason))
        if line is None:
            line = _status_line(status, reason)
            if len(_STATUS_LINES) < 256:
                _STATUS_LINES[(status, reason)] = line
        # A new list: ``lines`` may outlive this answer (the upstream connection keeps
        # it until its next exchange), and must not keep the body alive with it.
        out = [line]
        out += lines
        if self.method == "HEAD" or status < 200 or status in (204, 304):
            body = b""  # no body whatever the headers say
        elif length is None:
            if self.version_10:
                close = True  # the end of the body is the end of the connection
            else:
                self._out_chunked = True
                out.append(b"Transfer-Encoding: chunked\r\n")
        if self.expect_continue and not self._complete:
            # Answered without asking for the body: the client may send it or not, so
            # where its next request starts is unknown. End the connection instead.
            close = True
        # Nothing will follow this answer on this connection: say so.
        last = conn._no_more and not conn._queue
        if close or last or not self.keep_alive or conn.server.draining:
            self.keep_alive = False
            out.append(b"Connection: close\r\n\r\n")
        elif self.version_10:
            out.append(b"Connection: keep-alive\r\n\r\n")
        else:
            out.append(b"\r\n")
        if body:
            if self._out_chunked:
                out += (b"%x\r\n" % len(body), body, b"\r\n")
            else:
                out.append(body)
        if end:
            if self._out_chunked:
                out.append(b"0\r\n\r\n")
            self.finished = True
        conn.write(b"".join(out))

    def respond(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        close: bool = False,
    ) -> None:
        """A whole answer with a Content-Length, in one write."""
        headers.append((b"Content-Length", b"%d" % len(body)))
        self.start(status, "", headers, length=len(body), body=body, end=True, close=close)

    async def write(self, data: bytes) -> None:
        """More of the answer's body; waits while the client is slow to read it."""
        if self._out_chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        conn = self._conn
        conn.write(data)
        if conn.write_paused:
            await conn.drain()

    def end(self) -> None:
        """The answer is complete."""
        if not self.finished:
            self.finished = True
            if self._out_chunked:
                self._conn.write(b"0\r\n\r\n")


class _Connection(asyncio.Protocol):
    """One client connection; its task serves the requests on it one after another."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.peer: str | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._max_field = server.max_header_size
        self._max_head = 32 * server.max_header_size
        self.lost = False
        self.read_paused = False
        self.write_paused = False
        self.served = 0
        #: waiting for the next request (not mid-request)
        self.idle = True
        self._idle_since = 0.0
        self._queue: collections.deque[Request | ProxyError] = collections.deque()
        #: the request whose head or body the parser is reading
        self._parsing: Request | None = None
        self._url = b""
        self._in_head = False
        self._head_bytes = 0
        self._head_fields = 0
        #: no more requests will be read on this connection
        self._no_more = False
        self._discard = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._eof = False
        #: the request being handled
        self.current: Request | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else None
        server = self.server
        server.connections.add(self)
        loop = self._loop = asyncio.get_running_loop()
        self._idle_since = loop.time()
        self._timer = loop.call_later(server.idle_timeout, self._check_idle)
        self._task = loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self._discard:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT, or an Upgrade the proxy does not do: answer this request (the
            # handler refuses or forwards it plainly), then end the connection.
            req = self._parsing
            if req is not None and not req._complete:
                req._complete = True
            self._parsing = None
            self._stop_reading()
            self._wake()
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge | _Refused):
                self._failed(BadRequest(str(exc.__context__)))
            else:
                self._failed(BadRequest("malformed request"))
        except httptools.HttpParserError as exc:
            self._failed(BadRequest(f"malformed request ({_parser_reason(exc)})"))
        else:
            if self._in_head:
                self._head_bytes += len(data)
                # Each line is bounded by the callbacks; this bounds how many there are
                # (httptools buffers a head until it is complete).
                if self._head_bytes > self._max_head:
                    self._failed(BadRequest("the request head is too large"))

    def eof_received(self) -> bool | None:
        # The client sent all it will send: answer what is queued, then close.
        self._no_more = True
        self._eof = True
        req = self._parsing
        if req is not None and not req._complete and req._error is None:
            # Half-closed mid-body: the request is incomplete, the client may still read.
            req._error = BadRequest("the request body ended before its announced end")
        if self._discard and self.transport is not None:
            self.transport.close()
        self._wake()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._no_more = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._in_head = True
        self._head_bytes = 0
        self._head_fields = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_field:
            raise _HeadTooLarge(_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._parsing
        if req is None:
            method = self.parser.get_method().decode("ascii", "replace")
            req = self._parsing = Request(
                self, method, self._url.decode("utf-8", "surrogateescape")
            )
        size = len(name) + len(value) + 4
        if size - 2 > self._max_field:
            raise _HeadTooLarge(_TOO_LONG)
        self._head_fields += size
        if self._head_fields > self._max_head:
            raise _HeadTooLarge("the request head is too large")
        req.raw_headers.append((name, value))
        if len(name) in _NOTED_LENGTHS:
            key = name.lower()
            if key == _CONTENT_LENGTH:
                req.content_length = int(value)
            elif key == _TRANSFER_ENCODING:
                # Only plain chunked: another coding (gzip, chunked) would be re-framed
                # and lost on the way, and disagreeing framings are how requests are
                # smuggled past a proxy.
                if value.strip().lower() != b"chunked":
                    raise _Refused("only Transfer-Encoding: chunked is accepted")
                req.chunked = True
            elif key == _EXPECT:
                req.expect_continue = value.lower() == b"100-continue"
            elif key == _CONNECTION:
                if req.connection is None:
                    req.connection = [value]
                else:
                    req.connection.append(value)
            elif key == _X_REQUEST_ID and req.request_id is None:
                req.request_id = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._in_head = False
        req = self._parsing
        parser = self.parser
        if req is None:  # no header fields at all
            method = parser.get_method().decode("ascii", "replace")
            req = self._parsing = Request(
                self, method, self._url.decode("utf-8", "surrogateescape")
            )
        req.keep_alive = parser.should_keep_alive()
        req.version_10 = parser.get_http_version() == "1.0"
        self._queue.append(req)
        if len(self._queue) > _MAX_QUEUED and not self.read_paused:
            self._pause()
        waiter = self._waiter  # _wake(), inline
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        req = self._parsing
        if req is None or req._done:
            return  # the handler is done with this request: drop the rest of its body
        req._chunks.append(body)
        req._buffered += len(body)
        if req._buffered > _HIGH_WATER and not self.read_paused:
            self._pause()
        self._wake()

    def on_message_complete(self) -> None:
        req = self._parsing
        if req is not None:
            req._complete = True
        self._parsing = None
        waiter = self._waiter  # _wake(), inline
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- plumbing -------------------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        # Kept from connection_made: asyncio.get_running_loop() is a getpid() syscall.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the parser or the transport has news."""
        self._waiter = self._get_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _pause(self) -> None:
        if self.transport is not None and not self.lost:
            self.read_paused = True
            self.transport.pause_reading()

    def maybe_resume(self) -> None:
        if not self.read_paused or self._discard or self._no_more or self.lost:
            return
        parsing = self._parsing
        if len(self._queue) < _MAX_QUEUED and (parsing is None or parsing._buffered < _LOW_WATER):
            self.read_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def _stop_reading(self) -> None:
        self._no_more = True
        self._discard = True

    def _failed(self, err: ProxyError) -> None:
        """The client sent something unparseable: answer it in turn, then close."""
        self._stop_reading()
        req = self._parsing
        self._parsing = None
        if req is not None and not self._in_head:
            # Its head was fine, its body is not: the handler learns so when it reads
            # the body, and answers; no request follows on this connection.
            req._error = err
        else:
            self._queue.append(err)
        self._in_head = False
        self._wake()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

    async def drain(self) -> None:
        if self.write_paused and not self.lost:
            self._drain = self._get_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None
        if self.lost:
            raise ConnectionResetError("the client closed the connection")

    def _check_idle(self) -> None:
        self._timer = None
        if self.lost:
            return
        loop = self._get_loop()
        timeout = self.server.idle_timeout
        delay = timeout
        if self.idle:
            waited = loop.time() - self._idle_since
            if waited >= timeout:
                self.close()
                return
            delay = timeout - waited
        self._timer = loop.call_later(delay, self._check_idle)

    def close(self) -> None:
        """Close at once (an idle connection, or at the end of a shutdown)."""
        self._stop_reading()
        if self.transport is not None and not self.lost:
            self.transport.close()
        self._wake()

    def abort(self) -> None:
        self._stop_reading()
        if self.transport is not None and not self.lost:
            self.transport.abort()
        self._wake()

    def _finish(self, linger: bool) -> None:
        transport = self.transport
        if transport is None or self.lost:
            return
        if not linger or self._eof:
            transport.close()
            return
        # Unread data at close makes the kernel send a reset, which can destroy the
        # answer before the client reads it: read and drop until the client closes.
        self._discard = True
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._get_loop().call_later(_LINGER, transport.abort)

    # -- the connection's task ---------------------------------------------------------------

    async def _run(self) -> None:
        server = self.server
        handler = server.handler
        queue = self._queue
        loop = self._get_loop()
        linger = False
        try:
            while True:
                # The next request (inline: a coroutine per request costs).
                while not queue:
                    if self._no_more or server.draining:
                        return
                    if not self.idle:
                        self.idle = True
                        self._idle_since = loop.time()
                    waiter = self._waiter = loop.create_future()
                    try:
                        await waiter
                    finally:
                        self._waiter = None
                self.idle = False
                item = queue.popleft()
                if self.read_paused:
                    self.maybe_resume()
                if isinstance(item, ProxyError):
                    linger = True
                    self._answer_error(item)
                    break
                self.current = item
                self.served += 1
                try:
                    await handler(item)
                except ConnectionError:
                    pass
                except Exception:
                    log.exception("unexpected error in the request handler")
                    if not item.started and not self.lost:
                        self._answer_error(ProxyError("internal error in authproxy"), item)
                self.current = None
                item._done = True
                if item._chunks:
                    item._chunks.clear()
                    item._buffered = 0
                if self.lost:
                    break
                if not item.finished:
                    if not item.started:
                        self._answer_error(ProxyError("internal error in authproxy"), item)
                    else:  # cut mid-answer: the client must see it truncated
                        self.abort()
                        break
                if not item.keep_alive:
                    # unread request data left: do not let it turn the close into a reset
                    linger = not item._complete or self._parsing is not None or self._in_head
                    break
                if self.write_paused:
                    await self.drain()
                if self.read_paused:
                    self.maybe_resume()
        except ConnectionError:
            pass
        finally:
            self.current = None
            self._finish(linger)

    def _answer_error(self, err: ProxyError, req: Request | None = None) -> None:
        status, headers, body = error_answer(err)
        headers.append((b"X-Request-Id", new_request_id().encode()))
        if req is None:
            req = Request(self, "GET", "")
        req.respond(status, headers, body, close=True)


def _parser_reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:80]


class Server:
    """The proxy port's HTTP server; ``handler`` answers each request."""

    def __init__(self, handler: Handler, *, max_header_size: int, idle_timeout: float) -> None:
        self.handler = handler
        self.max_header_size = max_header_size
        self.idle_timeout = idle_timeout
        self.connections: set[_Connection] = set()
        self.draining = False
        self._listeners: list[asyncio.Server] = []

    def protocol(self) -> _Connection:
        return _Connection(self)

    async def listen_tcp(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on ``host:port``; returns the port (the one chosen, for port 0).
        ``reuse_port``: share the port with other processes (``serve --workers``)."""
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(
            self.protocol,
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=_BACKLOG,
        )
        self._listeners.append(srv)
        bound: int = srv.sockets[0].getsockname()[1]
        return bound

    async def listen_unix(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_unix_server(self.protocol, path, backlog=_BACKLOG)
        self._listeners.append(srv)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections, let in-flight requests finish
        for up to ``grace`` seconds, then close whatever is left."""
        for srv in self._listeners:
            srv.close()
        # A connection accepted just before the listener closed may not have sent its
        # request yet; closing it as idle would reset its client. Give it a moment.
        deadline = time.monotonic() + min(0.5, grace)
        await asyncio.sleep(0)
        while time.monotonic() < deadline and any(
            c.served == 0 and c.idle and not c._queue for c in self.connections
        ):
            await asyncio.sleep(0.01)
        self.draining = True
        for conn in list(self.connections):
            if conn.idle and not conn._queue and not conn._in_head:
                conn.close()
            else:
                conn._wake()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        tasks = []
        for conn in list(self.connections):
            conn.abort()
            if conn._task is not None and not conn._task.done():
                tasks.append(conn._task)
        # A handler still waiting (on a token, say) would only find out at its next
        # read or write; it is past the grace period: cancel it.
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for srv in self._listeners:
            await srv.wait_closed()
        self._listeners.clear()


__all__ = ["Deadlines", "Request", "Server", "new_request_id"]
