"""Readiness that does not cascade, and the per-route view behind /readyz and /status.

As a sidecar, authproxy's readiness takes the application's pod in and out of its
Service. If one provider's outage made /readyz fail, every replica would leave the
Service together, also for traffic that never uses that provider: a cascading
failure. So the proxy is ready once the config is loaded, the listeners are up,
and each token route has either a token or one finished first attempt. After that,
a route's health is reported (here, and in ``authproxy_route_ready{route}``) but
does not flip readiness, except for the routes named in
``readiness.require_tokens``, which a user gates on because nothing works without
them.
"""

from __future__ import annotations

from typing import Required, TypedDict

from proxy.ops.view import ProxyView
from proxy.proxying.runtime import RouteRuntime
from proxy.telemetry.recent import Recent
from proxy.tokens.manager import TokenManager


class RouteState(TypedDict, total=False):
    """One route in /readyz's JSON and on /status. Never a token: its expiry and
    timestamps only (epoch seconds)."""

    prefix: Required[str]
    auth: Required[str]
    requests: Required[int]
    inflight: Required[int]
    #: the 401 replays and refusals of the recent window, by kind
    recent_401: Required[dict[str, int]]
    ready: Required[bool]
    #: a token, or a first attempt that finished (failed, or waits for consent)
    attempted: Required[bool]
    #: named in readiness.require_tokens
    required: Required[bool]
    #: "not needed", "valid", "expired" or "none"
    token: Required[str]
    token_held: bool
    expires_at: float | None
    expires_in: float | None
    refresh_at: float | None
    refresh_in: float | None
    source: str | None
    last_refresh: float | None
    last_error: str | None
    last_error_message: str | None
    last_error_at: float | None
    needs_consent: bool


class ReadinessDoc(TypedDict, total=False):
    """The JSON of /readyz (``token_store`` is added by the admin endpoint)."""

    ready: Required[bool]
    draining: Required[bool]
    require_tokens: Required[list[str]]
    store: Required[dict[str, object]]
    routes: Required[dict[str, RouteState]]
    token_store: dict[str, object]


def _token_state(state: RouteState, name: str, m: TokenManager, recent: Recent, now: float) -> None:
    """Fill in a token route's health, expiry, source and last error."""
    tok = m.token
    held = tok is not None and tok.usable(now)
    error = m.last_error
    last_message, last_at = recent.last_error(name)
    refresh_at = m.refresh_at(tok) if tok is not None else None
    state.update(
        {
            "ready": held or (tok is not None and error is None),
            "attempted": tok is not None or error is not None,
            "token": "valid" if held else ("expired" if tok is not None else "none"),
            "token_held": held,
            "expires_at": tok.expires_at if tok else None,
            "expires_in": round(tok.expires_at - now, 1) if tok and tok.expires_at else None,
            "refresh_at": refresh_at,
            "refresh_in": round(refresh_at - now, 1) if refresh_at is not None else None,
            "source": tok.how if tok else None,
            "last_refresh": m.last_refresh,
            "last_error": error,
            "last_error_message": last_message,
            "last_error_at": last_at,
        }
    )
    if m.needs_consent:
        state["needs_consent"] = True


def _route_state(
    proxy: ProxyView, name: str, rt: RouteRuntime, counts: dict[str, int]
) -> RouteState:
    state: RouteState = {
        "prefix": rt.config.prefix,
        "auth": rt.config.preset or rt.config.auth.type,
        "requests": counts.get(name, 0),
        "inflight": rt.inflight,
        "recent_401": proxy.metrics.recent.counts(name),
        "ready": True,
        "attempted": True,
        "required": False,
        "token": "not needed",
    }
    if rt.manager is not None:
        state["required"] = name in proxy.config.require_tokens
        _token_state(state, name, rt.manager, proxy.metrics.recent, proxy.clock.time())
    return state


def route_states(proxy: ProxyView) -> dict[str, RouteState]:
    """Per route: its health, its token's expiry and source, the last error and when.

    A route is healthy (``ready``) when it needs no token, holds a usable one, or
    holds an expired one that nothing has failed to renew yet. Nothing here shows a
    token: only its expiry and timestamps.
    """
    counts = proxy.metrics.request_counts()
    return {name: _route_state(proxy, name, rt, counts) for name, rt in proxy.routes.items()}


def store_state(proxy: ProxyView) -> dict[str, object]:
    """The token store's state for /readyz and /status: its type, and whatever the
    store itself reports through an optional ``state()`` method (a dict)."""
    doc: dict[str, object] = {"type": proxy.config.token_store.type}
    state = getattr(proxy.store, "state", None)
    if callable(state):
        doc.update(state())
    return doc


def readiness(proxy: ProxyView) -> tuple[bool, dict[str, RouteState]]:
    """Ready, and the per-route states; also sets ``authproxy_route_ready``."""
    routes = route_states(proxy)
    for name, r in routes.items():
        proxy.metrics.route_ready.labels(name).set(1 if r["ready"] else 0)
    ready = (
        proxy.ready
        and not proxy.draining
        and all(r["attempted"] for r in routes.values())
        and all(r["ready"] for r in routes.values() if r["required"])
    )
    return ready, routes


def readiness_doc(proxy: ProxyView) -> tuple[bool, ReadinessDoc]:
    """The JSON of /readyz (and of /status for a JSON client)."""
    ready, routes = readiness(proxy)
    doc: ReadinessDoc = {
        "ready": ready,
        "draining": proxy.draining,
        "require_tokens": list(proxy.config.require_tokens),
        "store": store_state(proxy),
        "routes": routes,
    }
    return ready, doc
