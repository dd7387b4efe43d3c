"""A client connection's task: its requests answered one after another, then the close.

Why a function of the connection: it is the one coroutine per connection (a coroutine
per request costs), and it keeps :mod:`proxy.http1.connection` to the parsing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.http1.errors import Http1Error
from proxy.http1.request import Request, new_request_id

if TYPE_CHECKING:
    from proxy.http1.connection import Connection

log = logging.getLogger("authproxy.server")

#: how long a closing connection keeps reading (and discarding) so that the client
#: sees its answer instead of a reset caused by unread data
_LINGER = 2.0


def finish(self: Connection) -> None:
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


async def serve(self: Connection) -> None:
    server = self.server
    handler = server.handler
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
                await handler(item)
            except ConnectionError:
                pass
            except Exception:
                log.exception("unexpected error in the request handler")
                if not item.started and not self.lost:
                    answer_error(self, Http1Error("internal error", status=500), item)
            self.current = None
            item._done = True
            if item._chunks:
                item._chunks.clear()
                item._buffered = 0
            if self.lost:
                break
            if not item.finished:
                if not item.started:
                    answer_error(self, Http1Error("internal error", status=500), item)
                else:  # cut mid-answer: the client must see it truncated
                    self.abort()
                    break
            if not item.keep_alive:
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


def answer_error(self: Connection, err: Http1Error, req: Request | None = None) -> None:
    status, headers, body = self.server.error_answer(err)
    headers.append((b"X-Request-Id", new_request_id().encode()))
    if req is None:
        req = Request(self, "GET", "")
    req.respond(status, headers, body, close=True)


__all__ = ["answer_error", "finish", "serve"]
