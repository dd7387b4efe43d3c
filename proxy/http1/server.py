"""A lean HTTP/1.1 server: an asyncio.Protocol around httptools (llhttp).

Why not aiohttp's server: per request it builds a message object, a request object,
a response object with its own header multidict, a payload stream and a handler
task, and formats headers through several layers; that was about a third of the
proxy's CPU. Here the parser's callbacks (httptools, the llhttp binding uvicorn
uses; never hand-written parsing) fill in one :class:`~proxy.http1.request.Request`
(:mod:`proxy.http1.connection`), one task per connection runs the handler for each
request in order, and an answer goes out in as few writes as possible.

What is refused while parsing gets its answer from ``Server.error_answer`` (the
proxy's contract lives outside this package) and is reported to ``on_refused``:
a malformed head, a Transfer-Encoding other than chunked, a missing, duplicated or
invalid Host on HTTP/1.1 (400), a request line too long (414), a field, a head or
too many fields (431). Request trailers are parsed and dropped, never merged into
the head. After an HTTP/1.0 request with a chunked body, or a request asking to
Upgrade, the connection closes once answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from proxy.http1.connection import Connection, ErrorAnswer, Handler, plain_answer
from proxy.http1.errors import Http1Error


class Server:
    """An HTTP/1.1 server; ``handler`` answers each request.

    ``error_answer`` renders a refusal made while parsing (status, headers, body);
    ``on_refused(err, peer)`` is told of each (for a log line and a counter).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_header_size: int,
        idle_timeout: float,
        backlog: int = 1024,
        error_answer: ErrorAnswer = plain_answer,
        on_refused: Callable[[Http1Error, str | None], None] | None = None,
    ) -> None:
        self.handler = handler
        self.max_header_size = max_header_size
        #: the whole head: a few fields at their longest
        self.max_head_size = 32 * max_header_size
        self.idle_timeout = idle_timeout
        self.backlog = backlog
        self.error_answer = error_answer
        self.on_refused = on_refused
        self.connections: set[Connection] = set()
        self.draining = False
        self._listeners: list[asyncio.Server] = []

    def protocol(self) -> Connection:
        return Connection(self)

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
            backlog=self.backlog,
        )
        self._listeners.append(srv)
        bound: int = srv.sockets[0].getsockname()[1]
        return bound

    async def listen_unix(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_unix_server(self.protocol, path, backlog=self.backlog)
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


__all__ = ["Server"]
