"""The lock-free hot-path metrics export exactly what prometheus-client would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from proxy.telemetry.metrics import Metrics


def samples(text: str, family: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    raise AssertionError(family)


def test_loop_histogram_matches_prometheus_client() -> None:
    values = [0.0001, 0.001, 0.0010001, 0.02, 2.5, 31.0, 0.5]
    ours = Metrics()
    ref_registry = CollectorRegistry()
    ref = Histogram(
        "authproxy_request_duration_seconds",
        "x",
        ["route"],
        buckets=ours.request_duration.bounds,
        registry=ref_registry,
    )
    for v in values:
        ours.request_duration.labels("r").observe(v)
        ref.labels("r").observe(v)
    from prometheus_client import generate_latest

    mine = samples(ours.render().decode(), "authproxy_request_duration_seconds")
    theirs = samples(generate_latest(ref_registry).decode(), "authproxy_request_duration_seconds")
    theirs = {k: v for k, v in theirs.items() if not k[0].endswith("_created")}
    assert mine == theirs


def test_loop_counter_labels_and_value() -> None:
    m = Metrics()
    for _ in range(3):
        m.requests.labels("r", "GET", "200").inc()
    m.requests.labels("r", "POST", "502").inc()
    got = samples(m.render().decode(), "authproxy_requests")
    assert (
        got[("authproxy_requests_total", (("code", "200"), ("method", "GET"), ("route", "r")))] == 3
    )
    assert (
        got[("authproxy_requests_total", (("code", "502"), ("method", "POST"), ("route", "r")))]
        == 1
    )
