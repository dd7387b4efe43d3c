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
from typing import Generic, Protocol, TypeVar

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

# A `_created` series per counter and histogram doubles the series for no use in
# PromQL (and Prometheus 2.x ingests them as plain gauges): off, for the process.
disable_created_metrics()  # type: ignore[no-untyped-call]

_C = TypeVar("_C")

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


class _Loop(Generic[_C]):
    """Children by label values, made on first use (:meth:`_new`); a collector."""

    def __init__(
        self, name: str, doc: str, labelnames: list[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.doc, self.labelnames = name, doc, labelnames
        self._children: dict[tuple[str, ...], _C] = {}
        registry.register(self)

    def _new(self) -> _C:
        raise NotImplementedError

    def labels(self, *values: str) -> _C:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new()
        return child

    def remove(self, *values: str) -> None:
        del self._children[values]

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError


class LoopCounter(_Loop[_Count]):
    """A labelled counter for the hot path, updated without locks.

    prometheus-client guards every update with a lock, for threads. The proxy's
    per-request metrics are only ever updated from its one event loop, so plain
    numbers do; this collector exports them with the same name, type and labels.
    """

    def _new(self) -> _Count:
        return _Count()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for key, child in list(self._children.items()):
            family.add_metric(list(key), child.value)
        yield family


class LoopHistogram(_Loop[_Buckets]):
    """A labelled latency histogram (buckets :data:`_LATENCY`) for the hot path,
    updated without locks (see LoopCounter)."""

    bounds = _LATENCY

    def _new(self) -> _Buckets:
        return _Buckets(self.bounds)

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


class CounterChild(Protocol):
    def inc(self, amount: float = 1.0) -> None: ...


class HistogramChild(Protocol):
    def observe(self, amount: float) -> None: ...


class CounterFamily(Protocol):
    """A labelled counter: :class:`LoopCounter`, or prometheus-client's ``Counter``."""

    def labels(self, *values: str) -> CounterChild: ...
    def remove(self, *values: str) -> None: ...


class HistogramFamily(Protocol):
    """A labelled histogram: :class:`LoopHistogram`, or prometheus-client's ``Histogram``."""

    def labels(self, *values: str) -> HistogramChild: ...
    def remove(self, *values: str) -> None: ...


class Metrics:
    """The metric families; the token layer writes to them through
    :class:`~proxy.tokens.events.TokenMetrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: prometheus-client's multiprocess directory, under ``serve --workers``
        self.shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self._proxy_families()
        self._token_families()
        self._process_families()
        #: the last minutes, for /status (timestamps on the proxy's clock)
        self.recent = Recent()
        self._cache_children: dict[tuple[str, bool], Counter] = {}
        self._inflight: dict[str, Callable[[], float]] = {}
        for outcome in ("success", "error"):
            self.config_reloads.labels(outcome)
        for operation in STORE_OPERATIONS:
            self.token_store_errors.labels(operation)
        for code in ("no_route", *ERROR_CODES):
            self.proxy_errors.labels("", code)

    # -- the definitions: one call each, grouped by what they describe ------------------

    def _proxy_families(self) -> None:
        self.requests = self._hot_counter(
            "authproxy_requests_total",
            "Requests answered, by route, method and status code.",
            ["route", "method", "code"],
        )
        self.request_duration = self._hot_histogram(
            "authproxy_request_duration_seconds",
            "Time from request received to response headers sent.",
        )
        self.upstream_duration = self._hot_histogram(
            "authproxy_upstream_duration_seconds", "Time the upstream took to answer with headers."
        )
        self.unauthorized_retries = self._counter(
            "authproxy_unauthorized_retries_total",
            "Upstream 401s, by outcome: replayed, not_replayable, failed, refused_fresh.",
            "route", "outcome",
        )  # fmt: skip
        self.inflight = Gauge(
            "authproxy_inflight_requests", "Requests being proxied now.", ["route"],
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.proxy_errors = self._counter(
            "authproxy_proxy_errors_total",
            "Errors answered by the proxy itself, by contract code.",
            "route", "code",
        )  # fmt: skip

    def _token_families(self) -> None:
        self.token_requests = self._counter(
            "authproxy_token_requests_total",
            "HTTP requests to token endpoints, by route, grant and outcome "
            "(success, error, unusable).",
            "route", "grant", "outcome",
        )  # fmt: skip
        self.token_duration = self._histogram(
            "authproxy_token_request_duration_seconds", "Time a token fetch took."
        )
        self.token_expiry = Gauge(
            "authproxy_token_expiry_timestamp_seconds",
            "Expiry of the route's current token, in epoch seconds.",
            ["route"], registry=self.registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.token_cache = self._counter(
            "authproxy_token_cache_total",
            "Token lookups answered from cache (hit) or needing a fetch (miss).",
            "route", "result",
        )  # fmt: skip
        self.token_lock_wait = self._histogram(
            "authproxy_token_lock_wait_seconds", "Time spent waiting for the token refresh lock."
        )
        self.token_store_errors = self._counter(
            "authproxy_token_store_errors_total",
            "Token store operations that failed (the proxy fell back to memory).",
            "operation",
        )
        self.token_store_up = Gauge(
            "authproxy_token_store_up",
            "1 while the token store is usable (shared tokens and lock), 0 while it is down.",
            registry=self.registry, multiprocess_mode="livemin",
        )  # fmt: skip
        self.token_store_up.set(1)
        self.route_ready = Gauge(
            "authproxy_route_ready",
            "1 while the route can get its token (or needs none); it does not gate "
            "readiness unless listed in readiness.require_tokens.",
            ["route"], registry=self.registry, multiprocess_mode="livemax",
        )  # fmt: skip

    def _process_families(self) -> None:
        self.config_reloads = self._counter(
            "authproxy_config_reloads_total", "Config reloads, by outcome (success, error).",
            "outcome",
        )  # fmt: skip
        self.build_info = Gauge(
            "authproxy_build_info", "Always 1; the version of authproxy running.", ["version"],
            registry=self.registry, multiprocess_mode="max",
        )  # fmt: skip
        self.build_info.labels(__version__).set(1)
        if self.shared_dir is None:
            # Under workers these are added at scrape time (see _registry_for_scrape).
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _histogram(self, name: str, doc: str) -> Histogram:
        """A per-route latency histogram."""
        return Histogram(name, doc, ["route"], buckets=_LATENCY, registry=self.registry)

    def _hot_counter(self, name: str, doc: str, labels: list[str]) -> CounterFamily:
        """Updated on every request: lock-free (see LoopCounter), except under workers,
        where values must reach the shared files, as the library's own classes do."""
        if self.shared_dir is None:
            return LoopCounter(name, doc, labels, self.registry)
        return Counter(name, doc, labels, registry=self.registry)

    def _hot_histogram(self, name: str, doc: str) -> HistogramFamily:
        """A per-route latency histogram updated on every request (see _hot_counter)."""
        if self.shared_dir is None:
            return LoopHistogram(name, doc, ["route"], self.registry)
        return Histogram(name, doc, ["route"], registry=self.registry, buckets=_LATENCY)

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

    # -- what TokenMetrics forwards, once per proxied request ---------------------

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
