"""Telemetry: Prometheus metrics, logs, the recent-events ring."""
