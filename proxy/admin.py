"""The admin port: /metrics, /healthz, /readyz, /status.

Separate from the proxy port so that probes and scrapes never compete with, or
get routed like, application traffic. Nothing here ever shows a token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from proxy.app import Proxy

PROXY: web.AppKey[Proxy] = web.AppKey("proxy")


def route_states(proxy: Proxy) -> dict[str, dict[str, Any]]:
    """Per route: whether a token is held or obtainable, its expiry, the last error."""
    now = proxy.clock.time()
    out: dict[str, dict[str, Any]] = {}
    for name, rt in proxy.routes.items():
        m = rt.manager
        if m is None:
            out[name] = {"ready": True, "auth": rt.config.auth.type}
            continue
        tok = m.token
        held = tok is not None and tok.usable(now)
        out[name] = {
            "ready": held,
            "auth": rt.config.auth.type,
            "token_held": held,
            "expires_in": round(tok.expires_at - now, 1) if tok and tok.expires_at else None,
            "last_error": m.last_error,
        }
    return out


async def metrics(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    return web.Response(body=proxy.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    routes = route_states(proxy)
    ready = proxy.ready and all(r["ready"] for r in routes.values())
    return web.json_response({"ready": ready, "routes": routes}, status=200 if ready else 503)


def admin_app(proxy: Proxy) -> web.Application:
    app = web.Application()
    app[PROXY] = proxy
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
