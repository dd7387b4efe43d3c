"""The wall clock, injectable so that expiry tests take milliseconds.

Token expiries are absolute epoch seconds (providers send `expiry: 1497881784`
or ISO 8601 instants), so the one clock authproxy needs is wall time.
Tests pass a :class:`ManualClock` to both the proxy and the fake providers and
move it forward instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """Anything with ``time()`` returning epoch seconds."""

    def time(self) -> float: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()


class Timer(Protocol):
    """What :func:`call_later` returns: something that can be cancelled."""

    def cancel(self) -> None: ...


class _ManualTimer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that only moves when told to; for tests and the demo.

    Timers set through :func:`call_later` run on this clock: moving it past their
    moment runs them, synchronously, so that a test of a refresh schedule or a
    backoff step takes milliseconds instead of sleeping.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._timers: list[tuple[float, int, _ManualTimer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    def set(self, now: float) -> None:
        self._now = now
        while self._timers and self._timers[0][0] <= self._now:
            _, _, handle, callback = heapq.heappop(self._timers)
            if not handle.cancelled:
                callback()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        handle = _ManualTimer()
        heapq.heappush(self._timers, (self._now + delay, next(self._seq), handle, callback))
        return handle


def call_later(clock: Clock, delay: float, callback: Callable[[], None]) -> Timer:
    """Run ``callback`` after ``delay`` seconds of ``clock``.

    A clock with its own ``call_later`` (:class:`ManualClock`) runs the timer; any
    other runs on the event loop's clock, which follows real time as the system
    clock does.
    """
    own = getattr(clock, "call_later", None)
    if own is not None:
        timer: Timer = own(delay, callback)
        return timer
    return asyncio.get_running_loop().call_later(delay, callback)
