"""An exchange's one deadline, re-armed as it moves from phase to phase.

Arming and cancelling a uvloop timer per request costs several microseconds; an
entry in :class:`proxy.http1.Deadlines` (one loop timer for all exchanges) a
fraction of one. When the deadline passes, the exchange's task is cancelled and
``Exchange.timed_out`` says why; ``Clock.phase`` says what it was waiting for.
"""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.http1 import Deadlines
from proxy.telemetry.logs import Exchange

#: what the exchange is waiting for: the client's body, progress of a body either
#: way, the answer's head
BODY, READ, HEAD = "body", "read", "head"

Task = asyncio.Task[Any]
Queue = dict[Exchange, tuple[float, Task]]


class Clock:
    """The exchange's one deadline, re-armed as it moves on (a dict entry, no timer)."""

    __slots__ = ("wheel", "ex", "task", "queue", "phase")

    def __init__(self, wheel: Deadlines[Exchange, Task], ex: Exchange, task: Task) -> None:
        self.wheel = wheel
        self.ex = ex
        self.task = task
        self.queue: Queue | None = None
        self.phase = ""

    @classmethod
    def of(cls, ex: Exchange, task: Task) -> Clock:
        """A clock for ``ex`` on the wheel of ``task``'s loop."""
        wheel = _wheel
        if wheel is None or wheel.loop is not task.get_loop():
            wheel = _new_wheel(task.get_loop())
        return cls(wheel, ex, task)

    def arm(self, delay: float, phase: str) -> None:
        queue = self.queue
        if queue is not None:
            queue.pop(self.ex, None)
        self.phase = phase
        self.queue = self.wheel.add(delay, self.ex, self.task)

    def stop(self) -> None:
        if self.queue is not None:
            self.queue.pop(self.ex, None)
            self.queue = None


def _expire(ex: Exchange, task: Task) -> None:
    ex.timed_out = True
    task.cancel()


#: the exchange deadlines of the running loop
_wheel: Deadlines[Exchange, Task] | None = None


def _new_wheel(loop: asyncio.AbstractEventLoop) -> Deadlines[Exchange, Task]:
    # Another loop than the last one (tests run many): deadlines already added stay
    # with the old wheel, whose timer still fires on its own loop.
    global _wheel
    _wheel = Deadlines(loop, _expire)
    return _wheel


__all__ = ["BODY", "HEAD", "READ", "Clock"]
