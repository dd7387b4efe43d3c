"""The bound on request bodies buffered for a 401 replay, across all routes at once.

Each route buffers at most ``max_replay_body`` per request, but ``max_concurrent``
requests on each of many routes could then hold gigabytes. A body that finds the
budget spent is streamed instead (and its 401, if any, goes to the client).
"""

from __future__ import annotations


class ReplayBudget:
    """Bytes that may be held in replay buffers right now (``limits.max_replay_total``)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> int:
        """Reserve ``size`` bytes; returns what was reserved (0: none, stream instead)."""
        if self.used + size > self.limit:
            return 0
        self.used += size
        return size

    def give(self, size: int) -> None:
        self.used -= size


__all__ = ["ReplayBudget"]
