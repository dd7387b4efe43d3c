"""Every error of authproxy in one tree, and how each becomes the contract's answer.

Three families. Errors of the transport (:mod:`proxy.http1.errors`, classes like
httpx's) and of a token fetch (:mod:`proxy.tokens.token`) are translated into
the contract's errors (here) once each, with ``raise ... from exc``:

    transport: proxy.http1.errors              contract: proxy.errors
    Http1Error                                 ProxyError (500 internal_error)
    ├── ConnectError                           ├── NoRoute              404 no_route
    │   ├── TLSError                           ├── BadRequest           400 bad_request
    │   └── ConnectTimeout (also a Timeout)    │   ├── UriTooLong       414 bad_request
    ├── Timeout                                │   ├── HeadTooLarge     431 bad_request
    ├── ProtocolError                          │   └── VersionNotSupported 505 bad_request
    │   ├── Closed                             ├── RequestTimeout       408 request_timeout
    │   ├── UpgradeRefused                     ├── Forbidden            403 forbidden
    │   └── VersionRefused                     ├── MethodNotAllowed     405 method_not_allowed
    ├── TooLarge                               ├── BodyTooLarge         413 body_too_large
    │   └── LineTooLong                        ├── TokenUnavailable     502 token_unavailable
    └── HandlerFailed                          ├── UpstreamUnavailable  502 upstream_unavailable
                                               ├── TokenBackoff         503 token_backoff
    token: proxy.tokens.token                  ├── Overloaded           503 overloaded
    TokenFetchError (error_code, retryable)    ├── UpstreamTimeout      504 upstream_timeout
    ├── UnusableToken                          └── UpgradeNotSupported  501 upgrade_not_supported
    └── NeedsConsent

Where each is translated:

* a client's request refused while parsing or reading its body, and an upstream
  exchange that failed: ``Http1Error`` -> ``ProxyError`` in :mod:`proxy.http_errors`
  (``client_refusal``: 400/408/414/431/501/505; ``upstream_error``: 504 for a
  ``Timeout``, else 502);
* a token endpoint exchange that failed: ``Http1Error`` -> ``TokenFetchError`` in
  :mod:`proxy.tokens.flows.http` (worded for the endpoint), and a failed fetch
  -> ``TokenUnavailable`` (502) or ``TokenBackoff`` (503) in
  :func:`proxy.tokens.backoff.as_proxy_error`.

Outside the tree, on purpose: errors of start-up and of tools, never answered to
a client. ``ConfigError`` (every problem with its key path and line) and
``DiscoveryError`` (an issuer's metadata, read while the config is checked) and
``StoreError`` (a token store that cannot be used) stop ``check`` and ``serve``
with their message and a non-zero exit code; a stored token that cannot be read
is logged and passed over.

Each ``ProxyError`` knows its HTTP status and its contract code; :func:`error_answer`
is the one place that turns any of them into the JSON body with
``X-Authproxy-Error`` (and ``Retry-After`` for ``TokenBackoff`` and ``Overloaded``).
Messages are written for the person reading them and never contain a secret, a
token or a query string.
"""

from __future__ import annotations

import json
import math


class ProxyError(Exception):
    """Root of every error the proxy answers by itself."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self, message: str, *, route: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.route = route
        self.retry_after = retry_after

    def __init_subclass__(cls, *, status: int = 0, code: str = "") -> None:
        super().__init_subclass__()
        if status:
            cls.status = status
        if code:
            cls.code = code


class NoRoute(ProxyError, status=404, code="no_route"):
    """No route's prefix matches the request's path."""


class BadRequest(ProxyError, status=400, code="bad_request"):
    """The request is malformed, or could reach outside its route once decoded."""


class UriTooLong(BadRequest, status=414):
    """The request line is over ``limits.max_header_size``."""


class HeadTooLarge(BadRequest, status=431):
    """A header field, or the whole head, is over its bound."""


class VersionNotSupported(BadRequest, status=505):
    """Neither HTTP/1.0 nor HTTP/1.1."""


class RequestTimeout(ProxyError, status=408, code="request_timeout"):
    """The request body stopped arriving (``body_timeout``)."""


class Forbidden(ProxyError, status=403, code="forbidden"):
    """The client is not in ``allow_from``, or lacks the inbound token."""


class MethodNotAllowed(ProxyError, status=405, code="method_not_allowed"):
    """CONNECT on the proxy port; a method an admin endpoint does not take."""


class BodyTooLarge(ProxyError, status=413, code="body_too_large"):
    """The request body is over the route's ``max_body``."""


class TokenUnavailable(ProxyError, status=502, code="token_unavailable"):
    """The route has no token to send, and fetching one failed."""


class UpstreamUnavailable(ProxyError, status=502, code="upstream_unavailable"):
    """The upstream could not be reached, or its answer was broken."""


class TokenBackoff(ProxyError, status=503, code="token_backoff"):
    """Fetching failed recently: no new attempt before ``retry_after``."""


class Overloaded(ProxyError, status=503, code="overloaded"):
    """The route has ``max_concurrent`` requests in flight already."""


class UpstreamTimeout(ProxyError, status=504, code="upstream_timeout"):
    """The upstream did not answer (``timeout``) or made no progress (``read_timeout``)."""


class UpgradeNotSupported(ProxyError, status=501, code="upgrade_not_supported"):
    """A WebSocket, or a body with Upgrade: authproxy never switches protocols."""


def error_body(err: ProxyError) -> bytes:
    detail: dict[str, str] = {"code": err.code}
    if err.route is not None:
        detail["route"] = err.route
    detail["message"] = err.message
    return json.dumps({"error": detail}).encode()


def error_answer(err: ProxyError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The contract's JSON answer for ``err``: status, headers and body."""
    headers = [
        (b"Content-Type", b"application/json"),
        (b"X-Authproxy-Error", err.code.encode()),
        (b"Cache-Control", b"no-store"),
    ]
    if err.retry_after is not None:
        headers.append((b"Retry-After", b"%d" % max(1, math.ceil(err.retry_after))))
    return err.status, headers, error_body(err)
