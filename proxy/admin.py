"""The admin port: /metrics, /healthz, /readyz, /status.

Separate from the proxy port so that probes and scrapes never compete with, or
get routed like, application traffic. It is served by the same lean server as the
proxy port (:mod:`proxy.server`), with its own listener and handler; a path other
than these four is a JSON 404 (``no_route``), a method other than GET or HEAD a 405.
Nothing here ever shows a token: the per-route view is built from a token's expiry
and timestamps only.
"""

from __future__ import annotations

import html
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST

from proxy.errors import MethodNotAllowed, NoRoute, ProxyError, error_answer
from proxy.http1 import Request
from proxy.stores import store_line, store_state

if TYPE_CHECKING:
    from proxy.app import Proxy


def route_states(proxy: Proxy) -> dict[str, dict[str, Any]]:
    """Per route: whether a token is held or obtainable, its expiry, the last error.

    A route is ready when it needs no token, holds a usable one, or holds an
    expired one that nothing has failed to renew yet.
    """
    now = proxy.clock.time()
    counts = proxy.metrics.request_counts()
    out: dict[str, dict[str, Any]] = {}
    for name, rt in proxy.routes.items():
        state: dict[str, Any] = {
            "prefix": rt.config.prefix,
            "auth": rt.config.preset or rt.config.auth.type,
            "requests": counts.get(name, 0),
            "inflight": rt.inflight,
        }
        m = rt.manager
        if m is None:
            state.update(ready=True, token="not needed")
            out[name] = state
            continue
        tok = m.token
        held = tok is not None and tok.usable(now)
        error = m.last_error
        if held:
            token_state = "valid"
        elif tok is not None:
            token_state = "expired"
        else:
            token_state = "none"
        state.update(
            ready=held or (tok is not None and error is None),
            token=token_state,
            token_held=held,
            expires_at=tok.expires_at if tok else None,
            expires_in=round(tok.expires_at - now, 1) if tok and tok.expires_at else None,
            source=tok.how if tok else None,
            last_refresh=m.last_refresh,
            last_error=error,
        )
        if m.needs_consent:
            state["needs_consent"] = True
        out[name] = state
    return out


def readiness(proxy: Proxy) -> tuple[bool, dict[str, dict[str, Any]]]:
    routes = route_states(proxy)
    ready = proxy.ready and not proxy.draining and all(r["ready"] for r in routes.values())
    return ready, routes


_JSON = b"application/json; charset=utf-8"
_NO_STORE = (b"Cache-Control", b"no-store")


def _json(request: Request, doc: Any, status: int = 200) -> None:
    body = json.dumps(doc).encode()
    request.respond(status, [(b"Content-Type", _JSON), _NO_STORE], body)


def metrics(proxy: Proxy, request: Request) -> None:
    body = proxy.metrics.render()
    request.respond(200, [(b"Content-Type", CONTENT_TYPE_LATEST.encode())], body)


def healthz(proxy: Proxy, request: Request) -> None:
    _json(request, {"status": "ok"})


def readyz(proxy: Proxy, request: Request) -> None:
    ready, routes = readiness(proxy)
    doc = {"ready": ready, "draining": proxy.draining, "routes": routes}
    doc["token_store"] = store_state(proxy.store)  # shown; never gates readiness
    _json(request, doc, 200 if ready else 503)


def status(proxy: Proxy, request: Request) -> None:
    """The per-route view for a person; JSON when the client asks for it."""
    ready, routes = readiness(proxy)
    accept = request.get_header(b"accept") or b""
    if b"application/json" in accept:
        doc = {"ready": ready, "draining": proxy.draining, "routes": routes}
        _json(request, {**doc, "token_store": store_state(proxy.store)})
        return
    page = _status_page(ready, proxy.draining, routes, proxy.clock.time())
    line = html.escape(store_line(proxy.store))
    page = page.replace("<p>JSON:", f"<p>{line}</p><p>JSON:", 1)
    request.respond(200, [(b"Content-Type", b"text/html; charset=utf-8"), _NO_STORE], page.encode())


ENDPOINTS: dict[str, Callable[[Proxy, Request], None]] = {
    "/metrics": metrics,
    "/healthz": healthz,
    "/readyz": readyz,
    "/status": status,
}


def admin_handler(proxy: Proxy) -> Callable[[Request], Awaitable[None]]:
    """The admin port's request handler, for a :class:`proxy.server.Server`."""

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


def _ago(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "never"
    return f"{_span(now - epoch)} ago"


def _span(seconds: float) -> str:
    s = int(abs(seconds))
    if s < 120:
        text = f"{s}s"
    elif s < 7200:
        text = f"{s // 60}m {s % 60}s"
    else:
        text = f"{s // 3600}h {s % 3600 // 60}m"
    return text if seconds >= 0 else f"-{text}"


def _status_page(ready: bool, draining: bool, routes: dict[str, dict[str, Any]], now: float) -> str:
    rows = []
    for name, r in routes.items():
        left = r.get("expires_in")
        token = r["token"]
        if left is not None:
            token += f" ({_span(left)} left)"
        cells = [
            name,
            r["prefix"],
            r["auth"],
            token,
            _ago(r.get("last_refresh"), now) if "last_refresh" in r else "",
            r.get("last_error") or "",
            str(r["requests"]),
            str(r["inflight"]),
            "yes" if r["ready"] else "no",
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    overall = "draining" if draining else ("ready" if ready else "not ready")
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "route", "prefix", "auth", "token", "last refresh", "last error",
            "requests", "in flight", "ready",
        )
    )  # fmt: skip
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>authproxy status</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head>"
        f"<body><h1>authproxy: {overall}</h1><table><tr>{head}</tr>{''.join(rows)}</table>"
        "<p>JSON: send <code>Accept: application/json</code>.</p></body></html>"
    )


__all__ = ["ENDPOINTS", "admin_handler", "readiness", "route_states"]
