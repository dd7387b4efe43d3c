"""The one place where the HTTP/1.1 layer's errors become the contract's.

Like httpx's ``map_httpcore_exceptions``: :mod:`proxy.http1` knows nothing of the
proxy's error codes, and nothing else here matches on its error classes.
"""

from __future__ import annotations

from proxy.errors import (
    BadRequest,
    HeadTooLarge,
    ProxyError,
    RequestTimeout,
    UpgradeNotSupported,
    UpstreamTimeout,
    UpstreamUnavailable,
    UriTooLong,
    VersionNotSupported,
)
from proxy.http1.errors import (
    Closed,
    ConnectError,
    Http1Error,
    ProtocolError,
    Timeout,
    TLSError,
    TooLarge,
    UpgradeRefused,
)


def upstream_error(exc: Http1Error, route: str | None) -> ProxyError:
    """An exchange with an upstream failed: 504 when it was too slow, else 502."""
    if isinstance(exc, Timeout):
        return UpstreamTimeout(exc.message, route=route)
    return UpstreamUnavailable(exc.message, route=route)


def client_refusal(exc: Http1Error) -> ProxyError:
    """A request the server refused while reading it (or its body)."""
    if isinstance(exc, UpgradeRefused):
        return UpgradeNotSupported(exc.message)
    if isinstance(exc, TooLarge):
        return UriTooLong(exc.message) if exc.status == 414 else HeadTooLarge(exc.message)
    if isinstance(exc, Timeout):
        return RequestTimeout(exc.message)
    if exc.status == 505:
        return VersionNotSupported(exc.message)
    if exc.status >= 500:
        return ProxyError("internal error in authproxy")
    return BadRequest(exc.message)


def token_client_kind(exc: Http1Error) -> tuple[str, str]:
    """How a token endpoint exchange failed, as ``flows.client.ClientError`` kinds."""
    if isinstance(exc, Timeout):
        return "timeout", ""
    if isinstance(exc, TLSError):
        return "tls", exc.detail
    if isinstance(exc, ConnectError):
        return "connect", exc.detail
    if isinstance(exc, TooLarge):
        return "too_large", ""
    if isinstance(exc, ProtocolError) and not isinstance(exc, Closed):
        return "invalid", "malformed answer"
    return "cut", ""


__all__ = ["client_refusal", "token_client_kind", "upstream_error"]
