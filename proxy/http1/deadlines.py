"""Many deadlines on one loop timer (see :class:`Deadlines`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Deadlines(Generic[K, V]):
    """Many deadlines on one loop timer.

    ``add(delay, key, value)`` calls ``fire(key, value)`` once ``delay`` seconds have
    passed, unless ``key`` was popped first from the dict it returns (one per delay).
    Arming and cancelling a uvloop timer per request costs several microseconds; a
    dict entry a fraction of one. Deadlines of one delay come due in the order they
    were added, which is their dict's order: the timer is armed for the first of the
    earliest ones, and when it fires, only the entries due are looked at.
    """

    __slots__ = ("loop", "_fire", "_queues", "_armed", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[K, V], None]) -> None:
        self.loop = loop
        self._fire = fire
        self._queues: dict[float, dict[K, tuple[float, V]]] = {}
        #: when the timer fires (inf: not armed)
        self._armed = float("inf")
        self._timer: asyncio.TimerHandle | None = None

    def add(self, delay: float, key: K, value: V) -> dict[K, tuple[float, V]]:
        when = self.loop.time() + delay
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = {}
        queue[key] = (when, value)
        if when < self._armed:
            self._arm(when)
        return queue

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = when
        self._timer = self.loop.call_at(when, self._due)

    def _due(self) -> None:
        self._timer = None
        self._armed = float("inf")
        now = self.loop.time()
        first = float("inf")
        for queue in list(self._queues.values()):
            while queue:
                key = next(iter(queue))
                when, value = queue[key]
                if when > now:
                    first = min(first, when)
                    break
                del queue[key]
                self._fire(key, value)
        if first < self._armed:
            self._arm(first)


__all__ = ["Deadlines"]
