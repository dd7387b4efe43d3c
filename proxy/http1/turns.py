"""A client connection's task: its requests answered one after another, then the close.

Why a function of the connection: it is the one coroutine per connection (a coroutine
per request costs), and it keeps :mod:`proxy.http1.connection` to the parsing.
:class:`Turn` is what it needs of the connection, :class:`Settings` of the server.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from proxy.http1.errors import HandlerFailed, Http1Error
from proxy.http1.request import Channel, Request

log = logging.getLogger("authproxy.server")

#: how long a closing connection keeps reading (and discarding) so that the client
#: sees its answer instead of a reset caused by unread data
_LINGER = 2.0

Handler = Callable[[Request], Awaitable[None]]
ErrorAnswer = Callable[[Http1Error], tuple[int, list[tuple[bytes, bytes]], bytes]]


class Settings(Protocol):
    """What a connection's task reads of its server (:class:`proxy.http1.server.Server`)."""

    @property
    def handler(self) -> Handler: ...

    @property
    def error_answer(self) -> ErrorAnswer: ...

    @property
    def draining(self) -> bool: ...


class Turn(Channel, Protocol):
    """A client connection as its task sees it (:class:`proxy.http1.connection.Connection`)."""

    @property
    def server(self) -> Settings: ...

    #: waiting for the next request (not mid-request), since ``_idle_since``
    idle: bool
    _idle_since: float
    served: int
    #: parsed requests (or a refusal) waiting for their turn, and their heads' bytes
    _queue: collections.deque[Request | Http1Error]
    _queued_bytes: int
    #: no more requests will be read; the rest of what arrives is dropped
    _no_more: bool
    _discard: bool
    #: the client half-closed
    _eof: bool
    _waiter: asyncio.Future[None] | None

    def abort(self) -> None: ...


def finish(self: Turn) -> None:
    transport = self.transport
    if transport is None or self.lost:
        return
    if self._eof:
        transport.close()
        return
    # Unread data at close makes the kernel send a reset, which can destroy the
    # answer before the client reads it (a pipelining client, a body not read):
    # half-close, then read and drop until the client closes (lingering close).
    self._discard = True
    if self.read_paused:
        self.read_paused = False
        transport.resume_reading()
    try:
        if transport.can_write_eof():
            transport.write_eof()
    except OSError:  # the client reset the connection meanwhile
        transport.abort()
        return
    self._get_loop().call_later(_LINGER, transport.abort)


async def serve(self: Turn) -> None:
    server = self.server
    queue = self._queue
    loop = self._get_loop()
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
            if isinstance(item, Http1Error):
                answer_error(self, item)
                break
            self._queued_bytes -= item.head_size
            if self.read_paused:
                self.maybe_resume()
            self.current = item
            self.served += 1
            try:
                await server.handler(item)  # inline: a coroutine per request costs
            except ConnectionError:
                pass
            except Exception:
                log.exception("unexpected error in the request handler")
                if not item.started and not self.lost:
                    answer_error(self, HandlerFailed("internal error"), item)
            if not _carry_on(self, item):
                break
            if self.write_paused:
                await self.drain()
            if self.read_paused:
                self.maybe_resume()
    except ConnectionError:
        pass
    finally:
        self.current = None
        finish(self)


def _carry_on(self: Turn, item: Request) -> bool:
    """After ``item``'s handler: drop what is left of its body, and say whether
    another request may follow on this connection."""
    self.current = None
    item._done = True
    if item._chunks:
        item._chunks.clear()
        item._buffered = 0
    if self.lost:
        return False
    if not item.finished:
        if not item.started:
            answer_error(self, HandlerFailed("internal error"), item)
        else:  # cut mid-answer: the client must see it truncated
            self.abort()
            return False
    return item.keep_alive


def answer_error(self: Turn, err: Http1Error, req: Request | None = None) -> None:
    status, headers, body = self.server.error_answer(err)
    if req is None:
        req = Request(self, "GET", "")
    req.respond(status, headers, body, close=True)


__all__ = ["ErrorAnswer", "Handler", "Settings", "Turn", "answer_error", "finish", "serve"]
