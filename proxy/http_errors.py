"""The one place where the HTTP/1.1 layer's errors become the contract's.

Like httpx's ``map_httpcore_exceptions``: :mod:`proxy.http1` knows nothing of the
proxy's error codes, and nothing else on the data path matches on its error
classes. (The token client's transport errors become ``TokenFetchError`` in
:mod:`proxy.tokens.flows.http`, worded for the endpoint; the whole tree is drawn
in :mod:`proxy.errors`.)
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
    HandlerFailed,
    Http1Error,
    LineTooLong,
    Timeout,
    TooLarge,
    UpgradeRefused,
    VersionRefused,
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
    if isinstance(exc, LineTooLong):
        return UriTooLong(exc.message)
    if isinstance(exc, TooLarge):
        return HeadTooLarge(exc.message)
    if isinstance(exc, Timeout):
        return RequestTimeout(exc.message)
    if isinstance(exc, VersionRefused):
        return VersionNotSupported(exc.message)
    if isinstance(exc, HandlerFailed):
        return ProxyError("internal error in authproxy")
    return BadRequest(exc.message)


__all__ = ["client_refusal", "upstream_error"]
