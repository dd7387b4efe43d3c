"""Connections through an HTTP egress proxy: a CONNECT tunnel, then TLS inside it.

:class:`Tunnel` is a drop-in for ``loop.create_connection(factory, host, port,
ssl=..., server_hostname=...)``: it connects to the proxy, asks it to ``CONNECT
host:port`` (with ``Proxy-Authorization`` when the proxy URL has credentials),
and on a 2xx answer hands the raw byte stream to the caller's protocol, after
``loop.start_tls`` when the origin is https (verified with the route's own TLS
context, SNI and hostname check against the origin, never the proxy).

Plain-http origins go through CONNECT too, rather than as absolute-form
requests to the proxy: the request bytes are then exactly those a direct
connection would carry, the connection pool and its framing checks need no
second mode, and the injected token never sits in a request the proxy parses.

The proxy's answer is found by its blank line (bounded to :data:`MAX_HEAD`) and
parsed by llhttp (httptools), as the rest of authproxy parses HTTP. Failures
are :class:`~proxy.http1.errors.ConnectError` (a 502), whose
message names the proxy's ``host:port`` and its status, never its credentials.
"""

from __future__ import annotations

import asyncio
import os
import ssl as _ssl
from collections.abc import Callable
from typing import TypeVar

import httptools

from proxy import __version__
from proxy.http1.egress import ProxyURL
from proxy.http1.errors import ConnectError, TLSError

#: the proxy's answer head to CONNECT is a few hundred bytes; past this it is refused
MAX_HEAD = 16 * 1024
P = TypeVar("P", bound=asyncio.BaseProtocol)


class _Handshake(asyncio.Protocol):
    """Collects the proxy's answer head to CONNECT; nothing else is read."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.buffer = b""
        self.answer: asyncio.Future[tuple[int, str, bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self.status = 0
        self.reason = b""
        self._parser: httptools.HttpResponseParser | None = None

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._fail(f"egress proxy {self.where} sent an answer head over 16 KiB")
            return
        head, extra = self.buffer[: end + 4], self.buffer[end + 4 :]
        self._parser = httptools.HttpResponseParser(self)
        try:
            self._parser.feed_data(head)
        except httptools.HttpParserError:
            self._fail(f"egress proxy {self.where} sent a malformed answer to CONNECT")
            return
        if not self.status:
            self._fail(f"egress proxy {self.where} sent a malformed answer to CONNECT")
            return
        self.answer.set_result((self.status, _printable(self.reason), extra))

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_headers_complete(self) -> None:
        # llhttp knows no CONNECT answers and would read on as a body: the status is all
        # that matters here, and the bytes after the head are the tunnel's.
        assert self._parser is not None
        self.status = self._parser.get_status_code()

    def eof_received(self) -> bool | None:
        self._fail(f"egress proxy {self.where} closed the connection before answering CONNECT")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"egress proxy {self.where} closed the connection before answering CONNECT")

    def _fail(self, message: str) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectError(message, detail=message))


def _printable(reason: bytes) -> str:
    """The proxy's reason phrase, for a message: printable ASCII, bounded."""
    text = "".join(c if 32 <= ord(c) < 127 else " " for c in reason.decode("latin-1"))
    return text.strip()[:60]


class Tunnel:
    """Opens connections to origins through one HTTP proxy (see the module doc).

    Stateless apart from its settings: one instance may serve many pools at once."""

    def __init__(self, proxy: ProxyURL) -> None:
        self.proxy = proxy
        #: how errors and logs name the proxy: host:port, never the credentials
        self.name = proxy.authority
        self._auth = proxy.proxy_authorization() or b""

    def _request(self, host: str, port: int) -> bytes:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if any(c in target for c in "\r\n\x00 "):
            raise ConnectError("invalid upstream host", detail="invalid host")
        return (
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            f"User-Agent: authproxy/{__version__}\r\n".encode("ascii")
            + self._auth
            + b"\r\n"
        )

    async def open_connection(
        self,
        factory: Callable[[], P],
        host: str,
        port: int,
        *,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> tuple[asyncio.Transport, P]:
        """``loop.create_connection(factory, host, port, ssl=..., server_hostname=...)``,
        through the proxy. The caller bounds the time it takes (``connect_timeout``)."""
        loop = asyncio.get_running_loop()
        where = self.name
        request = self._request(host, port)
        try:
            raw, handshake = await loop.create_connection(
                lambda: _Handshake(where), self.proxy.host, self.proxy.port
            )
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            message = f"cannot connect to egress proxy {where} ({reason})"
            raise ConnectError(message, detail=message) from exc
        transport = raw
        try:
            transport.write(request)
            status, reason, extra = await handshake.answer
            if not 200 <= status < 300:
                message = f"egress proxy {where} refused CONNECT to {host}:{port}: {status}"
                message += f" {reason}" if reason else ""
                raise ConnectError(message, detail=message)
            if extra:
                # Neither TLS nor HTTP/1.1 lets the origin speak first.
                message = f"egress proxy {where} sent data before the tunnel was used"
                raise ConnectError(message, detail=message)
            protocol = factory()
            if ssl is None:
                transport.set_protocol(protocol)
                protocol.connection_made(transport)
                return transport, protocol
            try:
                secure = await loop.start_tls(
                    transport, protocol, ssl, server_hostname=server_hostname or host
                )
            except _ssl.SSLError:
                raise  # the caller words it: "TLS with the upstream failed (...)"
            except (ConnectionError, OSError) as exc:
                message = f"TLS with the upstream through egress proxy {where} was cut"
                raise TLSError(message, detail=message) from exc
            if secure is None:  # the peer closed during the handshake
                message = f"TLS with the upstream through egress proxy {where} was cut"
                raise TLSError(message, detail=message)
            protocol.connection_made(secure)
            return secure, protocol
        except BaseException:
            transport.abort()
            raise

    __call__ = open_connection


__all__ = ["MAX_HEAD", "Tunnel"]
