"""When a route's token is refreshed in the background: the refresh window, and
the one timer that opens it, on the injected clock.

The timer runs through :func:`proxy.clock.call_later`: a
:class:`~proxy.clock.ManualClock` runs it when a test moves the clock past its
moment, so a test of a refresh or a backoff step moves the clock instead of
sleeping. The system clock runs it on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.clock import Clock, Timer, call_later
from proxy.tokens.token import Token

#: the longest a timer is set for; a later moment is looked at again then
LONGEST = 86400.0


def refresh_at(tok: Token, refresh_before: float, fetch_time: float) -> float | None:
    """When a background refresh starts, or None for a token that never expires.

    ``refresh_before`` ahead of expiry, at most half the lifetime ahead (so that
    short-lived tokens are still used), and in any case early enough that a fetch
    taking ``fetch_time`` (the route's ``token_timeout``) ends before the token
    stops being sent: with ``refresh_before: 1s`` the window used to open when the
    token was already unusable, and requests waited for the whole fetch.
    """
    if tok.expires_at is None:
        return None
    lifetime = max(0.0, tok.expires_at - tok.obtained_at)
    usable_until = tok.expires_at - tok.skew
    usable_for = max(0.0, usable_until - tok.obtained_at)
    configured = tok.expires_at - min(refresh_before, lifetime / 2)
    latest = usable_until - min(fetch_time, usable_for / 2)
    return min(configured, latest)


class RefreshSchedule:
    """One timer on ``clock`` that calls ``due`` when it fires. Arming it again
    replaces the moment; after :meth:`close` it never fires again."""

    def __init__(self, clock: Clock, due: Callable[[], None]) -> None:
        self.clock = clock
        self._due = due
        self._timer: Timer | None = None
        self.closed = False

    @property
    def armed(self) -> bool:
        """A timer is set."""
        return self._timer is not None

    def at(self, when: float) -> None:
        """Fire at ``when`` (the clock's time), or at once when that has passed."""
        self.arm(max(0.0, when - self.clock.time()))

    def arm(self, delay: float) -> None:
        """Fire in ``delay`` seconds of the clock (instead of any earlier moment)."""
        self.cancel()
        if not self.closed:
            self._timer = call_later(self.clock, min(delay, LONGEST), self._fire)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.closed = True
        self.cancel()

    def _fire(self) -> None:
        self._timer = None
        if not self.closed:
            self._due()
