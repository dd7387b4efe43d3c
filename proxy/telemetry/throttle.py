"""At most one log line per interval per key, and a count of the lines left out.

A failing upstream or token endpoint (connection refused, a timeout, a 5xx) fails
every request that needs it: one warning per request would bury the log, and the
access line already records each request's ``error``. A :class:`Throttle` lets the
first line of a key (a route and a kind of failure) through, then drops that key's
lines for :data:`INTERVAL` seconds; the next line let through carries
``suppressed``, how many were dropped before it. The metrics still count every one.

The open windows are a ``cachetools.TTLCache`` on the given clock: it expires them
and bounds how many keys are remembered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from cachetools import TTLCache

from proxy.clock import Clock

#: seconds between two lines of one key
INTERVAL = 10.0


class _Window:
    __slots__ = ("suppressed",)

    def __init__(self) -> None:
        self.suppressed = 0


class Throttle:
    """One line per :data:`INTERVAL` per key; keys are tuples such as ``(route, kind)``."""

    def __init__(
        self, interval: float = INTERVAL, clock: Clock | None = None, maxsize: int = 4096
    ) -> None:
        timer: Callable[[], float] = clock.time if clock is not None else time.monotonic
        self.interval = interval
        self._maxsize = maxsize
        self._open: TTLCache[tuple[str, ...], _Window] = TTLCache(maxsize, interval, timer)
        #: lines dropped in windows that have ended, until the key's next line
        self._carried: dict[tuple[str, ...], int] = {}

    def allow(self, *key: str) -> int | None:
        """None: drop this line. Else log it: it follows this many dropped ones."""
        with self._open.timer as now:
            for ended, closed in self._open.expire(now):
                if closed.suppressed and len(self._carried) < self._maxsize:
                    self._carried[ended] = closed.suppressed
            window = self._open.get(key)
            if window is not None:
                # Counted in place: setting the key again would restart its window.
                window.suppressed += 1
                return None
            self._open[key] = _Window()
        return self._carried.pop(key, 0)

    def log(
        self,
        logger: logging.Logger,
        level: int,
        key: tuple[str, ...],
        msg: str,
        *args: object,
        extra: Mapping[str, object] | None = None,
    ) -> bool:
        """``logger.log(level, msg, *args)`` with ``suppressed`` in its fields, unless
        ``key`` had a line less than an interval ago. True when it was logged."""
        suppressed = self.allow(*key)
        if suppressed is None:
            return False
        logger.log(level, msg, *args, extra={**(extra or {}), "suppressed": suppressed})
        return True


__all__ = ["INTERVAL", "Throttle"]
