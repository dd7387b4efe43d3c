"""The HTTP/1.1 layer's own errors: one small tree of classes for both sides.

    Http1Error
    ├── ConnectError         the upstream could not be reached
    │   ├── TLSError         the TLS handshake failed
    │   └── ConnectTimeout   connecting took too long (also a Timeout)
    ├── Timeout              a peer was too slow
    ├── ProtocolError        a malformed message, or one this layer will not carry
    │   ├── Closed           the peer closed the connection mid-message
    │   ├── UpgradeRefused   the client asked to switch protocols (not done here)
    │   └── VersionRefused   not HTTP/1.0 or HTTP/1.1
    ├── TooLarge             a head, a field or a body over its bound
    │   └── LineTooLong      the request line over its bound
    └── HandlerFailed        the server's handler raised, or did not answer

Nothing here knows the proxy's contract: :mod:`proxy.http_errors` is the one place
that maps these to the contract's errors, the way httpx maps httpcore's (the token
client's failures become :class:`proxy.tokens.token.TokenFetchError` in
:mod:`proxy.tokens.flows.http`). ``status`` is what a bare :class:`~proxy.http1.server.Server`
answers when it refuses a request with the error; ``detail`` is the reason
alone, for other wording.
"""

from __future__ import annotations


class Http1Error(Exception):
    """Root of every error of the HTTP/1.1 layer."""

    status = 400

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


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


class VersionRefused(ProtocolError):
    """A request in another version than HTTP/1.0 or HTTP/1.1."""

    status = 505


class TooLarge(Http1Error):
    """A head, a header field or a body beyond its bound (431 on the server).

    On the client side ``answer`` is the status of the answer whose body was too
    large (0 when its head was).
    """

    status = 431

    def __init__(self, message: str, *, detail: str = "", answer: int = 0) -> None:
        super().__init__(message, detail=detail)
        self.answer = answer


class LineTooLong(TooLarge):
    """A request line beyond its bound."""

    status = 414


class HandlerFailed(Http1Error):
    """The server's handler raised, or returned without answering."""

    status = 500


__all__ = [
    "Closed",
    "ConnectError",
    "ConnectTimeout",
    "HandlerFailed",
    "Http1Error",
    "LineTooLong",
    "ProtocolError",
    "TLSError",
    "Timeout",
    "TooLarge",
    "UpgradeRefused",
    "VersionRefused",
]
