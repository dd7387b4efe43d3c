"""The wall clock, injectable so that expiry tests take milliseconds.

Token expiries are absolute epoch seconds (providers send `expiry: 1497881784`
or ISO 8601 instants), so the one clock authproxy needs is wall time.
Tests pass a :class:`ManualClock` to both the proxy and the fake providers and
move it forward instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything with ``time()`` returning epoch seconds."""

    def time(self) -> float: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to; for tests and the demo."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, now: float) -> None:
        self._now = now
