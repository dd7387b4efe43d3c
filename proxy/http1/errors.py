"""The HTTP/1.1 layer's own errors: one small tree for both sides.

    Http1Error
    ├── ConnectError         the upstream could not be reached
    │   └── TLSError         the TLS handshake failed
    ├── Timeout              a peer was too slow (``ConnectTimeout`` also a ConnectError)
    ├── ProtocolError        a malformed message, or one cut short (``Closed``)
    │   ├── Closed           the peer closed the connection mid-message
    │   └── UpgradeRefused   the client asked to switch protocols (not done here)
    └── TooLarge             a head or body over its bound

Nothing here knows the proxy's contract: :mod:`proxy.http_errors` is the one place
that maps these to the contract's errors, the way httpx maps httpcore's. ``status``
is what the server answers when it refuses a request with the error while parsing
(400, 414, 431); ``detail`` is the reason alone, for other wording.
"""

from __future__ import annotations


class Http1Error(Exception):
    """Root of every error of the HTTP/1.1 layer."""

    status = 400

    def __init__(self, message: str, *, detail: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if status:
            self.status = status


class ConnectError(Http1Error):
    """Connecting failed (refused, unreachable, name not found)."""


class TLSError(ConnectError):
    """The TLS handshake with the peer failed."""


class Timeout(Http1Error):
    """A peer did not send or read in time."""

    status = 408


class ConnectTimeout(Timeout, ConnectError):
    """Connecting took longer than its timeout."""


class ProtocolError(Http1Error):
    """A message that is not valid HTTP/1.1, or one the layer will not pass on."""


class Closed(ProtocolError):
    """The peer closed the connection before the end of a message."""


class UpgradeRefused(ProtocolError):
    """The request asks to switch to a protocol this layer does not carry."""

    status = 501


class TooLarge(Http1Error):
    """A request line, head or body beyond its bound (431 or 414 on the server)."""

    status = 431


__all__ = [
    "Closed",
    "ConnectError",
    "ConnectTimeout",
    "Http1Error",
    "ProtocolError",
    "TLSError",
    "Timeout",
    "TooLarge",
    "UpgradeRefused",
]
