"""The /status page: what an operator opens it for, in plain HTML.

Per route: readiness, when the token expires and will be refreshed, where it came
from (login, refresh, store), the last error and when, the 401 replays and
refusals of the last minutes; and the token store's state. It reloads itself
every few seconds with a ``<meta http-equiv="refresh">``: no script at all.
Everything shown is escaped; nothing here is a token.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

from proxy.ops.readiness import ReadinessDoc, RouteState
from proxy.telemetry.recent import WINDOW

#: seconds between the page's own reloads
REFRESH = 5

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    "th{background:#f4f4f4}.ok{color:#0a6b2d}.bad{color:#b00020;font-weight:bold}"
    ".muted{color:#777}small{color:#555}"
)


def _span(seconds: float) -> str:
    s = int(abs(seconds))
    if s < 120:
        text = f"{s}s"
    elif s < 7200:
        text = f"{s // 60}m {s % 60}s"
    else:
        text = f"{s // 3600}h {s % 3600 // 60}m"
    return text if seconds >= 0 else f"-{text}"


def _when(epoch: float | None, now: float) -> str:
    """``in 5m 3s (12:03:04Z)`` or ``2m ago (...)``; ``never`` for none."""
    if epoch is None:
        return "never"
    stamp = datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%SZ")
    delta = epoch - now
    rel = f"in {_span(delta)}" if delta > 0 else f"{_span(-delta)} ago"
    return f"{rel} ({stamp})"


def _cell(text: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{html.escape(text)}</td>"


def _token_cells(r: RouteState, now: float) -> tuple[str, str, str, str]:
    """token, expires, refreshes, source."""
    if r["token"] == "not needed":
        return ("not needed",) * 4
    if r["token"] == "none":
        expiry = "no token"
    elif r.get("expires_at") is None:
        expiry = "does not expire"
    else:
        expiry = _when(r.get("expires_at"), now)
    if r.get("token_held"):
        refresh = _when(r.get("refresh_at"), now)
    else:
        refresh = "retrying (backoff)" if r.get("last_error") else "fetching"
    return r["token"], expiry, refresh, r.get("source") or "none yet"


def _row(name: str, r: RouteState, now: float) -> str:
    recent = r.get("recent_401", {})
    replays = recent.get("replayed", 0)
    refusals = sum(n for kind, n in recent.items() if kind != "replayed")
    token, expiry, refresh, source = _token_cells(r, now)
    error = r.get("last_error_message") or r.get("last_error")
    error_text = f"{error} ({_when(r.get('last_error_at'), now)})" if error else "none"
    if r.get("needs_consent"):
        error_text = "needs consent: run `authproxy authorize`; " + error_text
    ready = "yes" if r["ready"] else "no"
    if r.get("required"):
        ready += " (gates readiness)"
    cells = [
        _cell(name),
        _cell(r["prefix"]),
        _cell(r["auth"]),
        _cell(ready, "ok" if r["ready"] else "bad"),
        _cell(token),
        _cell(expiry),
        _cell(refresh),
        _cell(source),
        _cell(error_text, "bad" if r.get("last_error") else "muted"),
        _cell(f"{replays} replayed, {refusals} refused"),
        _cell(str(r["requests"])),
        _cell(str(r["inflight"])),
    ]
    return "<tr>" + "".join(cells) + "</tr>"


_HEADS = (
    "route", "prefix", "auth", "ready", "token", "expires", "refreshes", "source",
    "last error", f"401s, last {int(WINDOW // 60)} min", "requests", "in flight",
)  # fmt: skip


def render(doc: ReadinessDoc, now: float) -> str:
    """The page for a /readyz document (see :func:`proxy.ops.readiness.readiness_doc`)."""
    rows = "".join(_row(name, r, now) for name, r in doc["routes"].items())
    head = "".join(f"<th>{h}</th>" for h in _HEADS)
    overall = "draining" if doc["draining"] else ("ready" if doc["ready"] else "not ready")
    store = ", ".join(f"{k}: {v}" for k, v in doc["store"].items())
    gates = ", ".join(doc["require_tokens"]) or "none (each token route after a first attempt)"
    stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{REFRESH}">'
        f"<title>authproxy: {overall}</title><style>{_STYLE}</style></head><body>"
        f'<h1>authproxy: <span class="{"ok" if doc["ready"] else "bad"}">{overall}</span></h1>'
        f"<p>Token store: {html.escape(store)}. Routes that gate readiness: "
        f"{html.escape(gates)}.</p>"
        f"<table><tr>{head}</tr>{rows}</table>"
        f"<p><small>As of {stamp}; this page reloads every {REFRESH} s. "
        "JSON: send <code>Accept: application/json</code>, or see /readyz.</small></p>"
        "</body></html>"
    )
