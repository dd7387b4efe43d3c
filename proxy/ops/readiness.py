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

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.app import Proxy


def route_states(proxy: Proxy) -> dict[str, dict[str, Any]]:
    """Per route: its health, its token's expiry and source, the last error and when.

    A route is healthy (``ready``) when it needs no token, holds a usable one, or
    holds an expired one that nothing has failed to renew yet. Nothing here shows a
    token: only its expiry and timestamps.
    """
    now = proxy.clock.time()
    counts = proxy.metrics.request_counts()
    recent = proxy.metrics.recent
    required = set(proxy.config.require_tokens)
    out: dict[str, dict[str, Any]] = {}
    for name, rt in proxy.routes.items():
        state: dict[str, Any] = {
            "prefix": rt.config.prefix,
            "auth": rt.config.preset or rt.config.auth.type,
            "requests": counts.get(name, 0),
            "inflight": rt.inflight,
            "recent_401": recent.counts(name),
        }
        m = rt.manager
        if m is None:
            state.update(ready=True, token="not needed", attempted=True, required=False)
            out[name] = state
            continue
        tok = m.token
        held = tok is not None and tok.usable(now)
        error = m.last_error
        token_state = "valid" if held else ("expired" if tok is not None else "none")
        last_message, last_at = recent.last_error(name)
        refresh_at = m.refresh_at(tok) if tok is not None else None
        state.update(
            ready=held or (tok is not None and error is None),
            # a token, or a first attempt that finished (failed, or waits for consent)
            attempted=tok is not None or error is not None,
            required=name in required,
            token=token_state,
            token_held=held,
            expires_at=tok.expires_at if tok else None,
            expires_in=round(tok.expires_at - now, 1) if tok and tok.expires_at else None,
            refresh_at=refresh_at,
            refresh_in=round(refresh_at - now, 1) if refresh_at is not None else None,
            source=tok.how if tok else None,
            last_refresh=m.last_refresh,
            last_error=error,
            last_error_message=last_message,
            last_error_at=last_at,
        )
        if m.needs_consent:
            state["needs_consent"] = True
        out[name] = state
    return out


def store_state(proxy: Proxy) -> dict[str, Any]:
    """The token store's state for /readyz and /status: its type, and whatever the
    store itself reports through an optional ``state()`` method (a dict)."""
    doc: dict[str, Any] = {"type": proxy.config.token_store.type}
    state = getattr(proxy.store, "state", None)
    if callable(state):
        doc.update(state())
    return doc


def readiness(proxy: Proxy) -> tuple[bool, dict[str, dict[str, Any]]]:
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


def readiness_doc(proxy: Proxy) -> tuple[bool, dict[str, Any]]:
    """The JSON of /readyz (and of /status for a JSON client)."""
    ready, routes = readiness(proxy)
    doc = {
        "ready": ready,
        "draining": proxy.draining,
        "require_tokens": list(proxy.config.require_tokens),
        "store": store_state(proxy),
        "routes": routes,
    }
    return ready, doc
