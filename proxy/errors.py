"""Errors the proxy makes itself, and how each becomes the contract's answer.

Everything the proxy refuses or fails at is a :class:`ProxyError`. Each subclass
knows its HTTP status and its contract code; :func:`error_answer` is the one
place that turns any of them into the JSON body with ``X-Authproxy-Error``.
The HTTP/1.1 layer's errors are translated into these in one place,
:mod:`proxy.http_errors`; token endpoint answers where they are read.

    ProxyError
    ├── NoRoute              404 no_route
    ├── BadRequest           400 bad_request
    │   ├── UriTooLong       414 bad_request
    │   ├── HeadTooLarge     431 bad_request
    │   └── VersionNotSupported 505 bad_request
    ├── RequestTimeout       408 request_timeout  (the request body stopped arriving)
    ├── Forbidden            403 forbidden
    ├── MethodNotAllowed     405 method_not_allowed
    ├── BodyTooLarge         413 body_too_large
    ├── TokenUnavailable     502 token_unavailable
    ├── UpstreamUnavailable  502 upstream_unavailable
    ├── TokenBackoff         503 token_backoff   (Retry-After)
    ├── Overloaded           503 overloaded      (Retry-After)
    ├── UpstreamTimeout      504 upstream_timeout
    └── UpgradeNotSupported  501 upgrade_not_supported

Messages are written for the person reading them and never contain a secret,
a token or a query string.
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


class NoRoute(ProxyError):
    status, code = 404, "no_route"


class BadRequest(ProxyError):
    status, code = 400, "bad_request"


class UriTooLong(BadRequest):
    status = 414


class HeadTooLarge(BadRequest):
    status = 431


class VersionNotSupported(BadRequest):
    status = 505


class RequestTimeout(ProxyError):
    status, code = 408, "request_timeout"


class Forbidden(ProxyError):
    status, code = 403, "forbidden"


class MethodNotAllowed(ProxyError):
    status, code = 405, "method_not_allowed"


class BodyTooLarge(ProxyError):
    status, code = 413, "body_too_large"


class TokenUnavailable(ProxyError):
    status, code = 502, "token_unavailable"


class UpstreamUnavailable(ProxyError):
    status, code = 502, "upstream_unavailable"


class TokenBackoff(ProxyError):
    status, code = 503, "token_backoff"


class Overloaded(ProxyError):
    status, code = 503, "overloaded"


class UpstreamTimeout(ProxyError):
    status, code = 504, "upstream_timeout"


class UpgradeNotSupported(ProxyError):
    status, code = 501, "upgrade_not_supported"


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
