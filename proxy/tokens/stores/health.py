"""Whether the shared token store works, said once per change and shown where asked.

One :class:`StoreHealth` per store. Every failed call reports here with its
Redis error named (:func:`proxy.tokens.stores.redis_topology.name_error`); the state changes
from ``up`` to ``down`` (or from one reason to another) are logged once each,
and so is the way back, not once per failed call. The gauge
``authproxy_token_store_up`` is 1 while the store is usable, and /readyz and
/status show :meth:`StoreHealth.view` (the store's state never makes the proxy
unready: it serves from memory meanwhile).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.telemetry.metrics import Metrics

log = logging.getLogger("authproxy.store")


class StoreHealth:
    """The state of one shared store: up, or down with a named reason."""

    def __init__(self, kind: str, where: str, metrics: Metrics | None = None) -> None:
        self.kind = kind
        self.where = where
        self.metrics = metrics
        self.up = True
        self.reason: str | None = None
        self.since = time.time()
        #: how many times the state changed (up->down, down->up, reason changes)
        self.changes = 0
        self._gauge(1.0)

    def failed(self, operation: str, message: str) -> None:
        """A call failed with ``message`` (already named, never secret)."""
        self.count(operation)
        if self.up or self.reason != message:
            was_up = self.up
            self.up, self.reason, self.since = False, message, time.time()
            self.changes += 1
            self._gauge(0.0)
            log.warning(
                "token store %s at %s %s; each replica keeps its own token until it is back",
                self.kind,
                self.where,
                message if message.startswith("unreachable") else f"refused: {message}",
                extra={"event": "store_down" if was_up else "store_down_reason"},
            )

    def ok(self) -> None:
        if not self.up:
            self.up, self.reason, self.since = True, None, time.time()
            self.changes += 1
            self._gauge(1.0)
            log.warning(
                "token store %s at %s is reachable again",
                self.kind,
                self.where,
                extra={"event": "store_up"},
            )

    def count(self, operation: str) -> None:
        if self.metrics is not None:
            self.metrics.token_store_errors.labels(operation).inc()

    def view(self) -> dict[str, object]:
        """For /readyz and /status: never a URL with credentials, never a token."""
        return {
            "type": self.kind,
            "where": self.where,
            "state": "up" if self.up else "down",
            "reason": self.reason,
            "since": round(self.since, 3),
        }

    def _gauge(self, value: float) -> None:
        gauge = getattr(self.metrics, "token_store_up", None) if self.metrics else None
        if gauge is not None:
            gauge.set(value)
