"""Kept for imports from before the move: the client is :mod:`proxy.http1.pool`."""

from __future__ import annotations

from proxy.http1 import HOP_BY_HOP, Http1Error, Pool, Response

#: the old names
UpstreamPool = Pool
UpstreamError = Http1Error
UpstreamResponse = Response

__all__ = ["HOP_BY_HOP", "UpstreamError", "UpstreamPool", "UpstreamResponse"]
