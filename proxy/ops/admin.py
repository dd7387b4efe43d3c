"""The admin port: /metrics, /healthz, /readyz, /status.

Separate from the proxy port so that probes and scrapes never compete with, or
get routed like, application traffic. It is served by the same lean server as the
proxy port (:mod:`proxy.http1`), with its own listener and handler; a path other
than these four is a JSON 404 (``no_route``), a method other than GET or HEAD a 405.
Nothing here ever shows a token: the per-route view is built from a token's expiry
and timestamps only.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from proxy.errors import MethodNotAllowed, NoRoute, ProxyError, error_answer
from proxy.http1 import Request
from proxy.ops import status_page as status_page
from proxy.ops.readiness import readiness, readiness_doc, route_states
from proxy.ops.view import ProxyView
from proxy.tokens.stores.base import store_state

_JSON = b"application/json; charset=utf-8"
_NO_STORE = (b"Cache-Control", b"no-store")


def _json(request: Request, doc: object, status: int = 200) -> None:
    body = json.dumps(doc).encode()
    request.respond(status, [(b"Content-Type", _JSON), _NO_STORE], body)


def metrics(proxy: ProxyView, request: Request) -> None:
    readiness(proxy)  # authproxy_route_ready, as of this scrape
    body = proxy.metrics.render()
    request.respond(200, [(b"Content-Type", CONTENT_TYPE_LATEST.encode())], body)


def healthz(proxy: ProxyView, request: Request) -> None:
    _json(request, {"status": "ok"})


def readyz(proxy: ProxyView, request: Request) -> None:
    ready, doc = readiness_doc(proxy)
    doc["token_store"] = store_state(proxy.store)  # shown; never gates readiness
    _json(request, doc, 200 if ready else 503)


def status(proxy: ProxyView, request: Request) -> None:
    """The per-route view for a person; JSON when the client asks for it."""
    _ready, doc = readiness_doc(proxy)
    accept = request.get_header(b"accept") or b""
    if b"application/json" in accept:
        _json(request, doc)
        return
    page = status_page.render(doc, proxy.clock.time())
    request.respond(200, [(b"Content-Type", b"text/html; charset=utf-8"), _NO_STORE], page.encode())


ENDPOINTS: dict[str, Callable[[ProxyView, Request], None]] = {
    "/metrics": metrics,
    "/healthz": healthz,
    "/readyz": readyz,
    "/status": status,
}


def admin_handler(proxy: ProxyView) -> Callable[[Request], Awaitable[None]]:
    """The admin port's request handler, for a :class:`proxy.http1.Server`."""

    async def handle(request: Request) -> None:
        endpoint = ENDPOINTS.get(request.path)
        try:
            if endpoint is None:
                raise NoRoute(f"no admin endpoint at this path; there are {', '.join(ENDPOINTS)}")
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed("the admin endpoints answer GET and HEAD only")
        except ProxyError as err:
            code, headers, body = error_answer(err)
            if err.status == 405:
                headers.append((b"Allow", b"GET, HEAD"))
            request.error_code = err.code
            request.respond(code, headers, body)
            return
        endpoint(proxy, request)

    return handle


__all__ = ["ENDPOINTS", "admin_handler", "readiness", "route_states"]
