"""One request on the server side: its head as parsed, its body, its answer's writer."""

from __future__ import annotations

import collections
import http
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote

import proxy.http1.framing as framing
from proxy.http1.errors import Http1Error
from proxy.http1.flow import Interrupted

if TYPE_CHECKING:
    import asyncio

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _status_line(status: int, reason: str) -> bytes:
    if not reason:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    return b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("latin-1", "replace"))


#: status lines by (status, reason); upstreams send the same few
_STATUS_LINES: dict[tuple[int, str], bytes] = {}


class Channel(Protocol):
    """What a request needs of its connection (:class:`proxy.http1.connection.Connection`)."""

    peer: str | None
    transport: asyncio.Transport | None
    lost: bool
    read_paused: bool
    write_paused: bool
    #: the request being handled
    current: Request | None
    #: the connection's task, which runs the handler of each request in turn
    _task: asyncio.Task[None] | None

    def _get_loop(self) -> asyncio.AbstractEventLoop: ...

    def _wake(self) -> None: ...

    async def wait(self) -> None: ...

    async def drain(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def maybe_resume(self) -> None: ...

    def closing_after(self, req: Request) -> bool: ...


class Request:
    """One request: its head as parsed, its body as a stream, and its answer's writer.

    Attribute names follow aiohttp's ``BaseRequest`` where they overlap (``method``,
    ``raw_path``, ``path``, ``raw_headers``, ``remote``, ``content_length``,
    ``read()``, ``transport``).
    """

    __slots__ = (
        "method", "raw_path", "raw_headers", "version_10", "keep_alive", "content_length",
        "chunked", "expect_continue", "request_id", "connection", "upgrade", "status",
        "error_code", "started", "finished", "head_size", "_conn", "_chunks",
        "_buffered", "_complete", "_done", "_error", "_out", "_hosts", "_interrupted",
        "stopped", "_expired",
    )  # fmt: skip

    def __init__(self, conn: Channel, method: str, raw_path: str) -> None:
        self.method = method
        #: the request target exactly as sent (path and query, percent-encoded)
        self.raw_path = raw_path
        #: (name, value) pairs as received, in order, duplicates kept (no trailers)
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
        #: the client's Upgrade value, if any (never acted on: see docs/security.md)
        self.upgrade: bytes | None = None
        #: the parser stopped at this request because it asked to Upgrade (llhttp then
        #: takes what follows the head for the new protocol: a body was not read)
        self.stopped = False
        #: the answer's status once started; 0 when none was sent (client gone)
        self.status = 0
        #: the answer's X-Authproxy-Error code, for the access log
        self.error_code = ""
        self.started = False
        self.finished = False
        #: bytes of the head, about (bounds the queue of pipelined heads)
        self.head_size = 0
        self._conn = conn
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        #: the handler is done with this request: the rest of its body is dropped
        self._done = False
        self._error: Exception | None = None
        #: the answer's framing (see proxy.http1.framing)
        self._out = framing.NONE
        #: Host field values seen
        self._hosts: list[bytes] | None = None
        self._interrupted = False
        #: :meth:`expire` interrupted the handler
        self._expired = False

    # -- the head ------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The path, percent-decoded, without the query string."""
        return unquote(self.raw_path.partition("?")[0])

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

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the connection (and the handler) runs on."""
        return self._conn._get_loop()

    @property
    def client_gone(self) -> bool:
        """The client's connection is closed (or closing): no answer can reach it."""
        conn = self._conn
        return conn.lost or conn.transport is None or conn.transport.is_closing()

    # -- the body ------------------------------------------------------------------

    def at_eof(self) -> bool:
        return self._complete and not self._chunks

    @property
    def body_complete(self) -> bool:
        """All of the body was received (read or not)."""
        return self._complete

    async def readany(self) -> bytes:
        """The next chunk of the body, or b'' at its end.

        Raises ConnectionError when the client went away before the end, and an
        :class:`~proxy.http1.errors.Http1Error` when the rest turned out malformed.
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
            if self._interrupted:
                raise Interrupted("the answer came before the rest of the body")
            if self.expect_continue:
                # The body is wanted now: only now ask the client to send it.
                self.expect_continue = False
                conn.write(CONTINUE)
            await conn.wait()

    async def read(self) -> bytes:
        """The whole body."""
        parts: list[bytes] = []
        while True:
            chunk = await self.readany()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    def interrupt(self) -> None:
        """Stop waiting for more of the body: a reader waiting gets ``Interrupted``."""
        self._interrupted = True
        self._conn._wake()

    # -- the handler's deadline ----------------------------------------------------

    def expire(self) -> None:
        """A deadline of the handler passed: interrupt it where it waits.

        The handler runs in its connection's task (one per connection, see
        :mod:`proxy.http1.turns`), which only the server may cancel: this does, and
        the handler gets CancelledError at its current await; :meth:`expired` tells
        that apart from a shutdown's. Nothing happens once the handler is done.
        """
        conn = self._conn
        task = conn._task
        if task is not None and conn.current is self and not self._expired:
            self._expired = True
            task.cancel()

    def expired(self) -> bool:
        """After a CancelledError: True when :meth:`expire` caused it. The cancel is
        then taken back, so that the handler can still answer (a 504, a 408)."""
        if not self._expired:
            return False
        self._expired = False
        task = self._conn._task
        if task is not None:
            task.uncancel()
        return True

    # -- the answer ----------------------------------------------------------------

    def interim(self, status: int, reason: str, lines: list[bytes]) -> None:
        """Pass on a 1xx interim answer (RFC 9110 15.2); not to an HTTP/1.0 client,
        which does not know them, and never once the final answer started."""
        if self.version_10 or self.started or status == 101:
            return
        if status == 100:
            if self._complete:
                return  # the body is all here: "go on" would be noise
            self.expect_continue = False  # asked, and answered: do not send another
        try:
            self._conn.write(b"".join([_status_line(status, reason), *lines, b"\r\n"]))
        except ConnectionError:
            pass  # the client is gone: the handler finds out at its next write

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
        how = self._out = framing.answer_framing(self.method, status, length, self.version_10)
        if how == framing.NONE:
            body = b""
        elif how == framing.CHUNKED:
            out.append(framing.CHUNKED_LINE)
        elif how == framing.CLOSE:
            close = True  # the end of the body is the end of the connection
        if self.expect_continue and not self._complete:
            # Answered without asking for the body: the client may send it or not, so
            # where its next request starts is unknown. End the connection instead.
            close = True
        # Nothing will follow this answer on this connection: say so.
        if close or not self.keep_alive or conn.closing_after(self):
            self.keep_alive = False
            out.append(b"Connection: close\r\n\r\n")
        elif self.version_10:
            out.append(b"Connection: keep-alive\r\n\r\n")
        else:
            out.append(b"\r\n")
        if body:
            if how == framing.CHUNKED:
                out += (b"%x\r\n" % len(body), body, b"\r\n")
            else:
                out.append(body)
        if end:
            if how == framing.CHUNKED:
                out.append(framing.LAST_CHUNK)
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
        if self._out == framing.CHUNKED:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        conn = self._conn
        conn.write(data)
        if conn.write_paused:
            await conn.drain()

    def end(self) -> None:
        """The answer is complete."""
        if not self.finished:
            self.finished = True
            if self._out == framing.CHUNKED:
                self._conn.write(framing.LAST_CHUNK)

    def fail(self, err: Http1Error) -> None:
        """Reading the rest of the body fails with ``err`` (set by the connection)."""
        if self._error is None:
            self._error = err


__all__ = ["Channel", "Request"]
