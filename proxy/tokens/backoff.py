"""Backing off while a token endpoint fails: the steps, and the failure a route
is in, on the injected clock.

While a route backs off no new token request starts; callers get 503
``token_backoff`` (502 ``token_unavailable`` for an answer retrying cannot fix).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.clock import Clock
from proxy.errors import ProxyError, TokenBackoff, TokenUnavailable
from proxy.tokens.token import TokenFetchError

#: the default ``backoff_cap``: a route is back within about this long after its
#: token endpoint heals (design.md, "Additions planned")
BACKOFF_CAP = 10.0

#: grants that spend a refresh token: retrying one whose answer was lost may
#: present an already rotated refresh token (see :func:`failure_wait`)
REFRESH_GRANTS = frozenset({"refresh_token", "login_refresh"})


@dataclass
class Backoff:
    """Exponential backoff with jitter, on the injected clock.

    ``cap`` is the route's ``backoff_cap``: the longest step, so the route comes
    back at most ``cap`` after its token endpoint heals.
    """

    base: float = 0.5
    cap: float = BACKOFF_CAP
    rand: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int) -> float:
        # A cap under the first step (backoff_cap: 0) must not mean "retry at once".
        cap = max(self.cap, self.base)
        ceiling: float = min(cap, self.base * (2.0 ** max(0, attempt - 1)))
        # Jittered, but never less than half the step: replicas spread out and
        # the provider still sees at most one attempt per step.
        return ceiling * (0.5 + 0.5 * self.rand())


def failure_wait(
    backoff: Backoff, attempts: int, exc: TokenFetchError, spends_refresh: bool, timeout: float
) -> float:
    """How long after a failed token request the next one may start."""
    wait = backoff.delay(attempts)
    if exc.retry_after is not None:
        wait = max(wait, exc.retry_after)
    if exc.lost and spends_refresh:
        # The provider may still be working on the refresh whose answer we lost,
        # and may have rotated the refresh token already. Presenting it again
        # sooner than it had to answer the first one is what reuse detection
        # (oidc-provider) punishes by revoking the grant: wait at least that long.
        wait = max(wait, timeout)
    return wait


def as_proxy_error(route: str, exc: TokenFetchError, wait: float | None) -> ProxyError:
    """What a caller answers for a failed fetch: 503 while backing off, else 502."""
    if exc.retryable and wait is not None and wait > 0:
        return TokenBackoff(
            f"{exc.message}; retrying in {wait:.0f}s", route=route, retry_after=wait
        )
    return TokenUnavailable(exc.message, route=route)


@dataclass
class Failure:
    """The last fetch failed with ``error``; no new one starts before ``until``."""

    error: TokenFetchError
    until: float
    #: failed fetches in a row
    attempts: int


class Failures:
    """The failure a route's token is in, if any: set by a failed fetch, cleared
    by a token."""

    def __init__(self, backoff: Backoff, clock: Clock, token_timeout: float) -> None:
        self.backoff = backoff
        self.clock = clock
        self.token_timeout = token_timeout
        self.last: Failure | None = None

    @property
    def error(self) -> TokenFetchError | None:
        return self.last.error if self.last is not None else None

    def backing_off(self, now: float) -> bool:
        return self.last is not None and now < self.last.until

    def left(self) -> float | None:
        """Seconds until the next fetch may start; None without a failure."""
        return self.last.until - self.clock.time() if self.last is not None else None

    def record(self, exc: TokenFetchError, grant: str) -> float:
        """A fetch of ``grant`` failed with ``exc``: how long until the next may start."""
        attempts = (self.last.attempts if self.last is not None else 0) + 1
        wait = failure_wait(
            self.backoff, attempts, exc, grant in REFRESH_GRANTS, self.token_timeout
        )
        self.last = Failure(exc, self.clock.time() + wait, attempts)
        return wait

    def clear(self) -> None:
        self.last = None
