"""An exchange's one deadline, re-armed as it moves from phase to phase.

Arming and cancelling a uvloop timer per request costs several microseconds; an
entry in :class:`Deadlines` (one loop timer for all exchanges) a fraction of one.
When the deadline passes, the request's handler is interrupted through the
server's own API (:meth:`proxy.http1.request.Request.expire`); ``Clock.phase``
says what it was waiting for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from proxy.http1.request import Request

#: what the exchange is waiting for: the client's body, progress of a body either
#: way, the answer's head
BODY, READ, HEAD = "body", "read", "head"

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


Queue = dict[Request, tuple[float, Request]]


class Clock:
    """The exchange's one deadline, re-armed as it moves on (a dict entry, no timer)."""

    __slots__ = ("wheel", "request", "queue", "phase")

    def __init__(self, wheel: Deadlines[Request, Request], request: Request) -> None:
        self.wheel = wheel
        self.request = request
        self.queue: Queue | None = None
        self.phase = ""

    @classmethod
    def of(cls, request: Request) -> Clock:
        """A clock for ``request`` on the wheel of its connection's loop."""
        wheel = _wheel
        loop = request.loop
        if wheel is None or wheel.loop is not loop:
            wheel = _new_wheel(loop)
        return cls(wheel, request)

    def arm(self, delay: float, phase: str) -> None:
        queue = self.queue
        if queue is not None:
            queue.pop(self.request, None)
        self.phase = phase
        self.queue = self.wheel.add(delay, self.request, self.request)

    def stop(self) -> None:
        if self.queue is not None:
            self.queue.pop(self.request, None)
            self.queue = None


def _expire(key: Request, request: Request) -> None:
    request.expire()


#: the exchange deadlines of the running loop
_wheel: Deadlines[Request, Request] | None = None


def _new_wheel(loop: asyncio.AbstractEventLoop) -> Deadlines[Request, Request]:
    # Another loop than the last one (tests run many): deadlines already added stay
    # with the old wheel, whose timer still fires on its own loop.
    global _wheel
    _wheel = Deadlines(loop, _expire)
    return _wheel


__all__ = ["BODY", "HEAD", "READ", "Clock", "Deadlines"]
