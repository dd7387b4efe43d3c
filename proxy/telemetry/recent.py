"""What happened lately, per route: for the /status page, not for Prometheus.

Prometheus has the counters; an operator who opens /status wants "how many 401
replays and refusals in the last minutes" and "the last token error, and when"
without a query language. This keeps a bounded window of such events per route
(timestamps only: no token, no path, no message from a client).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: how far back the /status page counts
WINDOW = 15 * 60.0
#: per route and kind: enough for the window at a high rate, bounded in memory
_MAX_EVENTS = 10_000


@dataclass
class RouteRecent:
    """One route's recent events."""

    events: dict[str, deque[float]] = field(default_factory=dict)
    last_error: str | None = None
    last_error_at: float | None = None


class Recent:
    """Recent events per route, on the proxy's clock (see :attr:`now`)."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self._routes: dict[str, RouteRecent] = {}

    def _route(self, route: str) -> RouteRecent:
        r = self._routes.get(route)
        if r is None:
            r = self._routes[route] = RouteRecent()
        return r

    def note(self, route: str, kind: str) -> None:
        """One event of ``kind`` (a 401 outcome such as ``replayed``) now."""
        q = self._route(route).events.setdefault(kind, deque(maxlen=_MAX_EVENTS))
        q.append(self.now())

    def error(self, route: str, message: str) -> None:
        r = self._route(route)
        r.last_error, r.last_error_at = message, self.now()

    def counts(self, route: str, window: float = WINDOW) -> dict[str, int]:
        """Events per kind within the last ``window`` seconds."""
        since = self.now() - window
        out: dict[str, int] = {}
        for kind, q in self._route(route).events.items():
            while q and q[0] < since:
                q.popleft()
            out[kind] = len(q)
        return out

    def last_error(self, route: str) -> tuple[str | None, float | None]:
        r = self._route(route)
        return r.last_error, r.last_error_at

    def forget(self, route: str) -> None:
        self._routes.pop(route, None)
