"""Every Prometheus metric authproxy exports, defined once.

Each :class:`Metrics` owns its own registry, so that several proxies can live in
one process (tests do that). Under ``serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR``
set by the supervisor), prometheus-client's multiprocess mode is used instead: every
worker writes its values to files there, and ``/metrics`` adds them up.

Label values are bounded: route names come from the config, methods from a fixed
set, codes from HTTP statuses and the contract's error codes. No label ever carries
a path, a query or a token.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from proxy import __version__
from proxy.telemetry.recent import Recent
from proxy.tokens.manager import Token, TokenFetchError

# A `_created` series per counter and histogram doubles the series for no use in
# PromQL (and Prometheus 2.x ingests them as plain gauges): off, for the process.
disable_created_metrics()  # type: ignore[no-untyped-call]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Up past the largest timeout (60 s by default, configurable): a request that ran
# into it lands in a bucket of its own, not only in +Inf.
_LATENCY = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)  # fmt: skip
#: label values known from the start: their counters exist at 0 (a dashboard shows
#: 0, not "No data", before the first one happens)
STORE_OPERATIONS = ("load", "save", "lock", "unlock", "renew")
ERROR_CODES = (
    "bad_request", "forbidden", "method_not_allowed", "body_too_large", "token_unavailable",
    "upstream_unavailable", "token_backoff", "overloaded", "upstream_timeout", "internal_error",
)  # fmt: skip
RETRY_OUTCOMES = ("replayed", "not_replayable", "failed")


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def _le(bound: float) -> str:
    """A bucket bound as prometheus-client writes it (``0.005``, ``1.0``)."""
    return repr(float(bound))


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Buckets:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # bisect_left: the first bucket whose bound is >= amount, as Prometheus counts.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class LoopCounter:
    """A labelled counter for the hot path, updated without locks.

    prometheus-client guards every update with a lock, for threads. The proxy's
    per-request metrics are only ever updated from its one event loop, so plain
    numbers do; this collector exports them with the same name, type and labels.
    """

    def __init__(
        self, name: str, doc: str, labelnames: list[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.doc, self.labelnames = name, doc, labelnames
        self._children: dict[tuple[str, ...], _Count] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Count:
        key = tuple(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = _Count()
        return child

    def remove(self, *values: str) -> None:
        del self._children[tuple(values)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for key, child in list(self._children.items()):
            family.add_metric(list(key), child.value)
        yield family


class LoopHistogram:
    """A labelled histogram for the hot path, updated without locks (see LoopCounter)."""

    def __init__(
        self,
        name: str,
        doc: str,
        labelnames: list[str],
        registry: CollectorRegistry,
        buckets: tuple[float, ...],
    ) -> None:
        self.name, self.doc, self.labelnames = name, doc, labelnames
        self.bounds = tuple(sorted(buckets))
        self._children: dict[tuple[str, ...], _Buckets] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Buckets:
        key = tuple(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = _Buckets(self.bounds)
        return child

    def remove(self, *values: str) -> None:
        del self._children[tuple(values)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        les = [_le(b) for b in self.bounds] + ["+Inf"]
        for key, child in list(self._children.items()):
            running = 0
            buckets: list[tuple[str, float]] = []
            for le, n in zip(les, child.counts, strict=True):
                running += n
                buckets.append((le, running))
            family.add_metric(list(key), buckets, child.sum)
        yield family


class Metrics:
    """The metric families, and the token events they count."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        #: prometheus-client's multiprocess directory, under ``serve --workers``
        self.shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        counter: Any = LoopCounter
        histogram: Any = LoopHistogram
        if self.shared_dir is not None:
            # Values must reach the shared files: the library's own classes do that.
            def counter(name: str, doc: str, labels: list[str], reg: Any) -> Counter:
                return Counter(name, doc, labels, registry=reg)

            def histogram(name: str, doc: str, labels: list[str], reg: Any, b: Any) -> Histogram:
                return Histogram(name, doc, labels, registry=reg, buckets=b)

        # The three updated on every request: lock-free (see LoopCounter).
        self.requests = counter(
            "authproxy_requests_total",
            "Requests answered, by route, method and status code.",
            ["route", "method", "code"],
            r,
        )
        self.request_duration = histogram(
            "authproxy_request_duration_seconds",
            "Time from request received to response headers sent.",
            ["route"],
            r,
            _LATENCY,
        )
        self.upstream_duration = histogram(
            "authproxy_upstream_duration_seconds",
            "Time the upstream took to answer with headers.",
            ["route"],
            r,
            _LATENCY,
        )
        self.token_requests = Counter(
            "authproxy_token_requests_total",
            "HTTP requests to token endpoints, by route, grant and outcome "
            "(success, error, unusable).",
            ["route", "grant", "outcome"],
            registry=r,
        )
        self.token_duration = Histogram(
            "authproxy_token_request_duration_seconds",
            "Time a token fetch took.",
            ["route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.token_expiry = Gauge(
            "authproxy_token_expiry_timestamp_seconds",
            "Expiry of the route's current token, in epoch seconds.",
            ["route"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.unauthorized_retries = Counter(
            "authproxy_unauthorized_retries_total",
            "Upstream 401s, by outcome: replayed, not_replayable, failed, refused_fresh.",
            ["route", "outcome"],
            registry=r,
        )
        self.inflight = Gauge(
            "authproxy_inflight_requests",
            "Requests being proxied now.",
            ["route"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.proxy_errors = Counter(
            "authproxy_proxy_errors_total",
            "Errors answered by the proxy itself, by contract code.",
            ["route", "code"],
            registry=r,
        )
        self.config_reloads = Counter(
            "authproxy_config_reloads_total",
            "Config reloads, by outcome (success, error).",
            ["outcome"],
            registry=r,
        )
        self.token_cache = Counter(
            "authproxy_token_cache_total",
            "Token lookups answered from cache (hit) or needing a fetch (miss).",
            ["route", "result"],
            registry=r,
        )
        self.token_lock_wait = Histogram(
            "authproxy_token_lock_wait_seconds",
            "Time spent waiting for the token refresh lock.",
            ["route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.token_store_errors = Counter(
            "authproxy_token_store_errors_total",
            "Token store operations that failed (the proxy fell back to memory).",
            ["operation"],
            registry=r,
        )
        self.token_store_up = Gauge(
            "authproxy_token_store_up",
            "1 while the token store is usable (shared tokens and lock), 0 while it is down.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.token_store_up.set(1)
        self.route_ready = Gauge(
            "authproxy_route_ready",
            "1 while the route can get its token (or needs none); it does not gate "
            "readiness unless listed in readiness.require_tokens.",
            ["route"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info = Gauge(
            "authproxy_build_info",
            "Always 1; the version of authproxy running.",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info.labels(__version__).set(1)
        if self.shared_dir is None:
            # Under workers these are added at scrape time (see _registry_for_scrape).
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        #: the last minutes, for /status (timestamps on the proxy's clock)
        self.recent = Recent()
        self._cache_children: dict[tuple[str, bool], Any] = {}
        self._inflight: dict[str, Callable[[], float]] = {}
        for outcome in ("success", "error"):
            self.config_reloads.labels(outcome)
        for operation in STORE_OPERATIONS:
            self.token_store_errors.labels(operation)
        for code in ("no_route", *ERROR_CODES):
            self.proxy_errors.labels("", code)

    def init_route(self, route: str) -> None:
        """The route's counters with known labels, at 0 from the start."""
        for code in ERROR_CODES:
            self.proxy_errors.labels(route, code)
        for outcome in RETRY_OUTCOMES:
            self.unauthorized_retries.labels(route, outcome)

    def track_inflight(self, route: str, read: Callable[[], float]) -> None:
        """Report ``read()`` as the route's in-flight gauge: read at scrape time, or
        every :meth:`sync` under workers (a scrape cannot call into other processes)."""
        if self.shared_dir is None:
            self.inflight.labels(route).set_function(read)
        else:
            self._inflight[route] = read

    def sync(self) -> None:
        """Under workers: write the in-flight gauges to the shared files."""
        for route, read in list(self._inflight.items()):
            self.inflight.labels(route).set(read())

    def request_counts(self) -> dict[str, int]:
        """Requests answered per route (all workers' under ``--workers``)."""
        counts: dict[str, int] = {}
        for family in self._registry_for_scrape().collect():
            if family.name != "authproxy_requests":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    route = sample.labels.get("route", "")
                    counts[route] = counts.get(route, 0) + int(sample.value)
        return counts

    def forget_route(self, route: str) -> None:
        """Drop a removed route's gauges, so that they do not go on reporting it."""
        self._inflight.pop(route, None)
        for hit in (True, False):
            self._cache_children.pop((route, hit), None)
        self.recent.forget(route)
        for gauge in (self.token_expiry, self.inflight, self.route_ready):
            try:
                gauge.remove(route)
            except KeyError:
                pass

    def _registry_for_scrape(self) -> CollectorRegistry:
        if self.shared_dir is None:
            return self.registry
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.shared_dir)  # type: ignore[no-untyped-call]
        # The process serving the scrape (worker 0): the others have no admin port.
        ProcessCollector(registry=merged)
        PlatformCollector(registry=merged)
        return merged

    def render(self) -> bytes:
        return generate_latest(self._registry_for_scrape())

    # -- TokenEvents ---------------------------------------------------------------

    def fetched(self, route: str, grant: str, token: Token, seconds: float) -> None:
        self.token_requests.labels(route, grant, "success").inc()
        self.token_duration.labels(route).observe(seconds)
        if token.expires_at is not None:
            self.token_expiry.labels(route).set(token.expires_at)

    def failed(self, route: str, grant: str, error: TokenFetchError, seconds: float) -> None:
        self.token_requests.labels(route, grant, "error").inc()
        self.token_duration.labels(route).observe(seconds)
        self.recent.error(route, error.message)

    def cache(self, route: str, hit: bool) -> None:
        # Once per proxied request: keep the labelled child instead of looking it
        # up (a lock and a dict) every time.
        child = self._cache_children.get((route, hit))
        if child is None:
            child = self.token_cache.labels(route, "hit" if hit else "miss")
            self._cache_children[(route, hit)] = child
        child.inc()

    def lock_wait(self, route: str, seconds: float) -> None:
        self.token_lock_wait.labels(route).observe(seconds)
