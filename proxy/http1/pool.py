"""Pooled keep-alive connections to one origin, and the exchange on one of them.

Concurrency: a :class:`Pool` is used by the tasks of one event loop. A connection
serves one exchange at a time and goes back to the pool only after its answer was
read to the end with keep-alive allowed (:mod:`proxy.http1.client` says when not).
The pool keeps at most ``max_idle`` idle connections and drops one that was idle
for longer than ``idle_expiry`` (15 s, as aiohttp): upstreams close idle
connections after their own keep-alive timeout (nginx: 75 s, many others less), and
a request sent just as that happens is lost in a race; not reusing connections that
old keeps clear of it.

Every connection, to an upstream or a token endpoint, is opened by
:func:`open_connection`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import proxy.http1.framing as framing
from proxy.http1.client import Connection, Interim
from proxy.http1.errors import (
    ConnectError,
    ConnectTimeout,
    Http1Error,
    TLSError,
)
from proxy.http1.flow import Interrupted
from proxy.http1.response import Response


class Opener(Protocol):
    """Opens connections as ``loop.create_connection`` does: an egress proxy's tunnel
    (:class:`proxy.http1.tunnel.Tunnel`). ``name`` says what is in between, for messages."""

    name: str

    async def open_connection(
        self,
        factory: Callable[[], Connection],
        host: str,
        port: int,
        *,
        ssl: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> tuple[asyncio.Transport, Connection]: ...


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
IDLE_EXPIRY = 15.0


async def open_connection(
    factory: Callable[[], Connection],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    timeout: float,
    opener: Opener | None = None,
) -> Connection:
    """A new connection to ``host:port`` (TLS when ``ssl_context``), within ``timeout``,
    directly or through ``opener`` (an egress proxy's tunnel)."""
    loop = asyncio.get_running_loop()
    conn: Connection
    try:
        _, conn = await asyncio.wait_for(
            (loop.create_connection if opener is None else opener.open_connection)(
                factory,
                host,
                port,
                ssl=ssl_context,
                server_hostname=host if ssl_context is not None else None,
            ),
            timeout,
        )
    except TimeoutError:
        via = "" if opener is None else f" through egress proxy {opener.name}"
        raise ConnectTimeout(
            f"connecting to the upstream{via} took longer than {timeout:g}s"
        ) from None
    except ssl.SSLError as exc:
        reason = exc.reason or type(exc).__name__
        raise TLSError(f"TLS with the upstream failed ({reason})", detail=reason) from exc
    except OSError as exc:
        # uvloop's strerror names the address; the errno alone says what happened
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        raise ConnectError(f"cannot connect to the upstream ({reason})", detail=reason) from exc
    return conn


class Pool:
    """Keep-alive connections to one origin (``host``, ``port``, optional TLS)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        max_idle: int = 256,
        idle_expiry: float = IDLE_EXPIRY,
        opener: Opener | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_expiry = idle_expiry
        self.opener = opener
        #: oldest first
        self._idle: collections.deque[Connection] = collections.deque()
        self._all: set[Connection] = set()

    def forget(self, conn: Connection) -> None:
        self._all.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def put(self, conn: Connection) -> None:
        idle = self._idle
        conn.idle_since = conn._get_loop().time()
        idle.append(conn)
        if len(idle) > self.max_idle:
            idle.popleft().abort()

    async def _connect(self) -> Connection:
        conn = await open_connection(
            lambda: Connection(self),
            self.host,
            self.port,
            ssl_context=self.ssl,
            timeout=self.connect_timeout,
            opener=self.opener,
        )
        self._all.add(conn)
        return conn

    def _take(self) -> Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()  # most recently used: least likely to be stale
            if conn.closed:
                continue
            if conn._get_loop().time() - conn.idle_since > self.idle_expiry:
                # This one and all older ones are past their time.
                conn.abort()
                for old in list(idle):
                    old.abort()
                idle.clear()
                return None
            return conn
        return None

    async def request(
        self,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        *,
        how: int = framing.LENGTH,
        interim: Interim | None = None,
        on_early: Callable[[], None] | None = None,
    ) -> Response:
        """Send ``head`` (request line and headers, ending in a blank line) and the body.

        ``body`` bytes are sent as they are (the head carries their Content-Length);
        an iterator is streamed under ``how`` (see :mod:`proxy.http1.framing`, decided
        with the head). ``interim`` gets each 1xx answer; ``on_early`` is called when
        the answer arrives before the body was all sent (to stop waiting for more of
        it: the iterator then raises ``Interrupted``). A request whose pooled
        connection turns out to be closed before any answer arrived is sent again on a
        new connection, only when that cannot duplicate it: an idempotent method with
        a body still in hand.
        """
        conn = self._take()
        while True:
            if conn is None:
                conn = await self._connect()
            # One coroutine and one future per request: the exchange is inline.
            answer = conn.start(skip_body=method == "HEAD")
            conn.interim = interim
            conn.on_early = on_early
            conn.sending = True
            try:
                try:
                    if body is None or isinstance(body, bytes):
                        conn.send(head + body if body else head)
                        if conn.write_paused:
                            await conn.drain()
                    else:
                        await _send_body(conn, answer, head, body, how)
                except (Http1Error, ConnectionError):
                    # The upstream may have answered and closed before reading it all.
                    if not answer.done() or answer.exception() is not None:
                        conn.abort()
                        raise
                except BaseException:
                    conn.abort()
                    raise
                finally:
                    conn.sending = False
                try:
                    response = await answer
                except BaseException:
                    conn.abort()
                    raise
            except Http1Error:
                if not (conn.reused and not conn.got_answer and _may_resend(method, body)):
                    raise
                conn = None
                continue
            conn.got_answer = True
            return response

    def close(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
        self._all.clear()


def _may_resend(method: str, body: bytes | AsyncIterator[bytes] | None) -> bool:
    """Sending again cannot duplicate the request: idempotent, its body still in hand."""
    return method in _IDEMPOTENT and not isinstance(body, AsyncIterator)


async def _send_body(
    conn: Connection,
    answer: asyncio.Future[Response],
    head: bytes,
    body: AsyncIterator[bytes],
    how: int,
) -> None:
    """Stream ``body`` after ``head``, until its end or an early answer."""
    await conn.write(head)
    try:
        async for chunk in body:
            if answer.done():
                return  # the upstream answered early (say 413): stop sending
            if chunk:
                await conn.write(framing.encode(how, chunk))
        if not answer.done() and how == framing.CHUNKED:
            await conn.write(framing.LAST_CHUNK)
    except Interrupted:
        pass  # answered while the client's body was still on its way
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


__all__ = ["IDLE_EXPIRY", "Opener", "Pool", "open_connection"]
