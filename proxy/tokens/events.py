"""The token layer's metrics: the :class:`~proxy.tokens.report.TokenEvents` of the
manager and the flows' request counter, written to the metrics
:class:`~proxy.telemetry.metrics.Metrics` defines.

``authproxy_token_requests_total`` is counted here per HTTP request to a token
endpoint (the flows call :meth:`TokenMetrics.request` once per request, with
the grant of that request), not per fetch: a login flow whose refresh is
refused and which then logs in counts two. The manager's ``fetched`` and
``failed`` events only time the fetch and set the expiry gauge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from proxy.tokens.token import Token, TokenFetchError

if TYPE_CHECKING:
    from proxy.telemetry.metrics import Metrics


class TokenMetrics:
    """:class:`TokenEvents` on the proxy's metrics, plus the per-request counter
    the flows call."""

    def __init__(self, metrics: Metrics, route: str) -> None:
        self.metrics = metrics
        self.route = route
        # Once per proxied request: the metrics' own methods, with no call in between.
        self.cache: Callable[[str, bool], None] = metrics.cache
        self.lock_wait: Callable[[str, float], None] = metrics.lock_wait

    def request(self, grant: str, outcome: str) -> None:
        """One HTTP request to a token endpoint: ``success``, ``error`` or ``unusable``."""
        self.metrics.token_requests.labels(self.route, grant, outcome).inc()

    def fetched(self, route: str, grant: str, token: Token, seconds: float) -> None:
        self.metrics.token_duration.labels(route).observe(seconds)
        if token.expires_at is not None:
            self.metrics.token_expiry.labels(route).set(token.expires_at)

    def failed(self, route: str, grant: str, error: TokenFetchError, seconds: float) -> None:
        self.metrics.token_duration.labels(route).observe(seconds)
        self.metrics.recent.error(route, error.message)  # /status: the last error and when
