"""The server side of one client connection: an asyncio.Protocol around httptools.

See :mod:`proxy.http1.server` for what it refuses while parsing, and why it exists.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from proxy.http1.errors import Http1Error, LineTooLong, ProtocolError, TooLarge, VersionRefused
from proxy.http1.flow import HIGH_WATER, LOW_WATER, Flow
from proxy.http1.request import Request
from proxy.http1.turns import ErrorAnswer, Handler, Settings, serve

#: pause reading when this many pipelined requests, or this many bytes of their
#: heads, wait for their turn
_MAX_QUEUED = 8
_MAX_QUEUED_BYTES = 64 * 1024
#: the most one read hands over: uvloop reads up to 256 KiB at a time (asyncio
#: 64 KiB), and the parser takes the whole read before the pause applies, so what
#: waits is bounded by _MAX_QUEUED_BYTES plus one read
MAX_READ_BYTES = 256 * 1024
#: how many header fields a request may have (Apache's LimitRequestFields)
MAX_FIELDS = 100
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_EXPECT = b"expect"
_CONNECTION = b"connection"
_X_REQUEST_ID = b"x-request-id"
_HOST = b"host"
_UPGRADE = b"upgrade"
_NOTED_LENGTHS = frozenset(
    len(n)
    for n in (_CONTENT_LENGTH, _TRANSFER_ENCODING, _EXPECT, _CONNECTION, _X_REQUEST_ID, _HOST)
) | {len(_UPGRADE)}
#: RFC 3986 host [":" port]: an IP literal, or reg-name / IPv4 characters
_HOST_RE = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(:[0-9]*)?\Z")


class Serving(Settings, Protocol):
    """What a connection reads of its server (:class:`proxy.http1.server.Server`)."""

    @property
    def max_header_size(self) -> int: ...

    @property
    def max_head_size(self) -> int: ...

    @property
    def idle_timeout(self) -> float: ...

    @property
    def connections(self) -> set[Connection]: ...

    @property
    def on_refused(self) -> Callable[[Http1Error, str | None], None] | None: ...


def plain_answer(err: Http1Error) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return err.status, [(b"Content-Type", b"text/plain")], err.message.encode() + b"\n"


class Connection(Flow):
    """One client connection; its task serves the requests on it one after another."""

    #: the head being parsed (set by on_message_begin): its target so far, its size
    #: as received and as accounted for by complete fields, its field count
    _url: bytes
    _head_bytes: int
    _accounted: int
    _fields: int

    def __init__(self, server: Serving) -> None:
        super().__init__()
        self.server = server
        self.peer: str | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._max_field = server.max_header_size
        self._max_head = server.max_head_size
        self.served = 0
        #: waiting for the next request (not mid-request)
        self.idle = True
        self._idle_since = 0.0
        self._queue: collections.deque[Request | Http1Error] = collections.deque()
        self._queued_bytes = 0
        #: the request whose head or body the parser is reading
        self._parsing: Request | None = None
        self.on_message_begin()
        self._in_head = False
        self._began = False
        #: no more requests will be read on this connection
        self._no_more = False
        self._discard = False
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
        self._task = loop.create_task(serve(self))

    def data_received(self, data: bytes) -> None:
        if self._discard:
            return
        self._began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgraded()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Http1Error):
                self._failed(cause)
            else:
                self._failed(ProtocolError("malformed request"))
        except httptools.HttpParserError as exc:
            reason = (str(exc) or type(exc).__name__)[:80]
            self._failed(ProtocolError(f"malformed request ({reason})"))
        else:
            if self._in_head:
                # httptools buffers a field until it is complete: bound what is not
                # accounted for by complete fields yet, so that one endless field is
                # refused as it arrives. (Where this head began inside ``data`` is not
                # known: then count only its complete fields.)
                if self._began:
                    self._head_bytes = self._accounted
                else:
                    self._head_bytes += len(data)
                if self._head_bytes - self._accounted > self._max_field + 256:
                    self._failed(TooLarge("a request header field is too long"))
                elif self._head_bytes > self._max_head:
                    self._failed(TooLarge("the request head is too large"))

    def _upgraded(self) -> None:
        # llhttp stops at a request asking to switch protocols (after its body, if
        # any). The switch is never made: the request is answered as a plain one
        # (or refused), and the connection closes after it.
        req = self._parsing
        if req is None:
            for item in reversed(self._queue):
                if isinstance(item, Request):
                    req = item
                    break
        if req is not None:
            req.keep_alive = False
            req._complete = True
            req.stopped = True
        self._parsing = None
        self._in_head = False
        self._no_more = True
        self._wake()

    def eof_received(self) -> bool | None:
        # The client sent all it will send: answer what is queued, then close.
        self._no_more = True
        self._eof = True
        req = self._parsing
        if req is not None and not req._complete and req._error is None:
            # Half-closed mid-body: the request is incomplete, the client may still read.
            req._error = ProtocolError("the request body ended before its announced end")
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
        self._wake_writer()

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._in_head = True
        self._began = True
        self._head_bytes = 0
        self._accounted = 0
        self._fields = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_field:
            raise LineTooLong("the request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field: never merged into the head (RFC 9110 6.5.1)
        req = self._parsing
        if req is None:
            method = self.parser.get_method().decode("ascii", "replace")
            req = self._parsing = Request(
                self, method, self._url.decode("utf-8", "surrogateescape")
            )
            self._accounted = len(self._url) + len(method) + 12
        size = len(name) + len(value) + 4
        if size - 2 > self._max_field:
            raise TooLarge("a request header field is too long")
        self._accounted += size
        self._fields += 1
        if self._fields > MAX_FIELDS:
            raise TooLarge(f"more than {MAX_FIELDS} request header fields")
        if self._accounted > self._max_head:
            raise TooLarge("the request head is too large")
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
                    raise ProtocolError("only Transfer-Encoding: chunked is accepted")
                req.chunked = True
            elif key == _HOST:
                if req._hosts is None:
                    req._hosts = [value]
                else:
                    req._hosts.append(value)
            elif key == _EXPECT:
                req.expect_continue = value.lower() == b"100-continue"
            elif key == _CONNECTION:
                if req.connection is None:
                    req.connection = [value]
                else:
                    req.connection.append(value)
            elif key == _X_REQUEST_ID and req.request_id is None:
                req.request_id = value.decode("latin-1")
            elif key == _UPGRADE:
                req.upgrade = value

    def on_headers_complete(self) -> None:
        req = self._parsing
        parser = self.parser
        if req is None:  # no header fields at all
            method = parser.get_method().decode("ascii", "replace")
            req = self._parsing = Request(
                self, method, self._url.decode("utf-8", "surrogateescape")
            )
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise VersionRefused(f"HTTP/{version} is not supported here")
        req.version_10 = version_10 = version == "1.0"
        if version_10 and req.chunked:
            # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing (an
            # HTTP/1.0 hop may read the body differently): refused, as nginx does.
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
        hosts = req._hosts
        if hosts is None:
            if not version_10:
                raise ProtocolError("an HTTP/1.1 request needs a Host header")
        elif len(hosts) > 1:
            raise ProtocolError("more than one Host header")
        elif not _HOST_RE.match(hosts[0]):
            raise ProtocolError("invalid Host header")
        self._in_head = False
        req.keep_alive = parser.should_keep_alive()
        if version_10:
            # No 100 Continue to a client that does not know it (RFC 9110 10.1.1).
            req.expect_continue = False
        req.head_size = size = max(self._head_bytes, self._accounted)
        self._queue.append(req)
        self._queued_bytes += size
        if len(self._queue) > _MAX_QUEUED or self._queued_bytes > _MAX_QUEUED_BYTES:
            self.pause_reading()
        self._wake()

    def on_body(self, body: bytes) -> None:
        req = self._parsing
        if req is None or req._done:
            return  # the handler is done with this request: drop the rest of its body
        req._chunks.append(body)
        req._buffered += len(body)
        if req._buffered > HIGH_WATER and not self.read_paused:
            self.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        req = self._parsing
        if req is not None:
            req._complete = True
        self._parsing = None
        self._wake()

    # -- plumbing -------------------------------------------------------------------------

    def maybe_resume(self) -> None:
        if not self.read_paused or self._discard or self._no_more or self.lost:
            return
        parsing = self._parsing
        if (
            len(self._queue) < _MAX_QUEUED
            and self._queued_bytes <= _MAX_QUEUED_BYTES
            and (parsing is None or parsing._buffered < LOW_WATER)
        ):
            self.resume_reading()

    def closing_after(self, req: Request) -> bool:
        """Nothing will follow ``req``'s answer on this connection."""
        return (self._no_more and not self._queue) or self.server.draining

    def _stop_reading(self) -> None:
        self._no_more = True
        self._discard = True

    def _failed(self, err: Http1Error) -> None:
        """The client sent something unparseable: answer it in turn, then close."""
        self._stop_reading()
        req = self._parsing
        self._parsing = None
        if req is not None and not self._in_head:
            # Its head was fine, its body is not: the handler learns so when it reads
            # the body, and answers; no request follows on this connection.
            req.fail(err)
        else:
            self._queue.append(err)
        self._in_head = False
        on_refused = self.server.on_refused
        if on_refused is not None:
            on_refused(err, self.peer)
        self._wake()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

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


__all__ = ["Connection", "ErrorAnswer", "Handler", "Serving", "plain_answer"]
