"""Tokens: the value, the source seam, and the one layer that caches them.

Like golang/oauth2, a :class:`TokenSource` only fetches: one method, given the
token it may refresh. Flows in ``proxy.tokens.flows`` are sources. Everything else
(caching, single flight, refreshing early in the background, invalidating a
token an upstream refused, backing off while the provider fails, sharing through
a :class:`~proxy.tokens.stores.base.TokenStore`) lives in :class:`TokenManager`.

Concurrency: a ``TokenManager`` is safe for concurrent use by the tasks of one
event loop, and only of one. Sources are called by at most one task at a time
per manager; across processes, the store's lock serialises them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

from proxy.clock import Clock, Timer, call_later
from proxy.telemetry.throttle import Throttle
from proxy.tokens.timing import (
    BACKOFF_CAP,
    REFUSED_COOLDOWN,
    Backoff,
    RefusalCooldown,
    as_proxy_error,
    failure_wait,
    refresh_at,
)
from proxy.tokens.token import (
    EXPIRY_SKEW,
    NeedsConsent,
    NullEvents,
    Token,
    TokenEvents,
    TokenFetchError,
    TokenSource,
    UnusableToken,
    expiry_skew,
    log_token_event,
)

log = logging.getLogger("authproxy.tokens")

#: while the shared store is down, how often a kept token's refresh is reconsidered
STORE_RETRY = 2.0

#: grants that spend a refresh token: retrying one whose answer was lost may
#: present an already rotated refresh token (see TokenManager._fail)
REFRESH_GRANTS = frozenset({"refresh_token", "login_refresh"})

#: what :meth:`TokenManager.refused` did with a refused token
Refusal = Literal["dropped", "newer", "refused_fresh"]


@dataclass
class _Failure:
    error: TokenFetchError
    until: float
    attempts: int


class TokenManager:
    """One route's token: cached, single-flight, refreshed early, invalidated on 401.

    - :meth:`get` answers at once while the cached token is usable. Inside the
      refresh window it also starts one background refresh. Without a usable
      token, every caller awaits the same fetch (single flight).
    - :meth:`invalidate` drops the token an upstream refused, only if it is still
      the current one: a newer token is kept.
    - A failing fetch sets a backoff: until it ends no new fetch starts, and
      callers get 503 ``token_backoff`` (or 502 ``token_unavailable`` for an
      answer that retrying cannot fix). Retryable failures are retried in the
      background when the step ends.
    """

    def __init__(
        self,
        route: str,
        source: TokenSource,
        *,
        store: Any,
        key: str,
        clock: Clock,
        refresh_before: float = 60.0,
        token_timeout: float = 10.0,
        events: TokenEvents | None = None,
        backoff: Backoff | None = None,
        refused_cooldown: float = REFUSED_COOLDOWN,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        self.route = route
        self.source = source
        self.store = store
        self.key = key
        self.clock = clock
        self.refresh_before = refresh_before
        self.token_timeout = token_timeout
        self.events: TokenEvents = events or NullEvents()
        self.backoff = backoff or Backoff(cap=backoff_cap)
        self.cooldown = RefusalCooldown(refused_cooldown, clock.time)
        #: a failing token endpoint: one warning per interval (see Throttle)
        self.log_throttle = Throttle(clock=clock)
        #: the token fetched to replace a refused one
        self._replacement: Token | None = None
        self._token: Token | None = None
        #: the token known usable and not due a refresh before ``_fresh_until``
        self._fresh_token: Token | None = None
        self._fresh_until = 0.0
        #: the last token refused upstream; kept for its refresh token, never sent
        self._refused: Token | None = None
        self._task: asyncio.Task[Token] | None = None
        self._timer: Timer | None = None
        self._failure: _Failure | None = None
        self._closed = False
        self.last_refresh: float | None = None

    # -- what callers use --------------------------------------------------------

    @property
    def token(self) -> Token | None:
        """The cached token, usable or not (for status pages; never for sending)."""
        return self._token

    @property
    def last_error(self) -> str | None:
        return self._failure.error.message if self._failure else None

    @property
    def needs_consent(self) -> bool:
        """No refresh token in config or store: ``authproxy authorize`` must run."""
        return self._failure is not None and isinstance(self._failure.error, NeedsConsent)

    def refresh_at(self, tok: Token) -> float | None:
        """When a background refresh starts (see :func:`proxy.tokens.timing.refresh_at`)."""
        return refresh_at(tok, self.refresh_before, self.token_timeout)

    async def get(self) -> Token:
        """A usable token, fetching one only when none is cached."""
        tok = self._token
        now = self.clock.time()
        if tok is not None and tok is self._fresh_token and now < self._fresh_until:
            # The common case, kept to two comparisons: usable, not yet due a refresh.
            self.events.cache(self.route, True)
            return tok
        if tok is not None and tok.usable(now):
            at = self.refresh_at(tok)
            if at is None:
                self._fresh_token, self._fresh_until = tok, math.inf
            elif now < at:
                assert tok.expires_at is not None
                self._fresh_token = tok
                self._fresh_until = min(at, tok.expires_at - tok.skew)
            elif self._task is None and not self._backing_off(now):
                self._start()
            self.events.cache(self.route, True)
            return tok
        self.events.cache(self.route, False)
        failure = self._failure
        if failure is not None and now < failure.until and self._task is None:
            raise as_proxy_error(self.route, failure.error, failure.until - now)
        task = self._task or self._start()
        try:
            return await asyncio.shield(task)
        except TokenFetchError as exc:
            failure = self._failure
            wait = failure.until - self.clock.time() if failure else None
            raise as_proxy_error(self.route, exc, wait) from None

    def invalidate(self, token: Token) -> bool:
        """An upstream refused ``token``: True when it was dropped (see :meth:`refused`)."""
        return self.refused(token) == "dropped"

    def refused(self, token: Token) -> Refusal:
        """An upstream refused ``token``. Drop it if it is still current.

        - ``dropped``: it was current and is gone; the next :meth:`get` fetches.
        - ``newer``: a newer token had already replaced it; retry with that one.
        - ``refused_fresh``: kept, the 401 goes to the client as is (see
          :class:`~proxy.tokens.timing.RefusalCooldown`): a replacement not yet
          seen working (:meth:`replayed`), or with the store down any token,
          fetched less than ``refused_cooldown`` ago. Replacing it hammers the provider.
        """
        current = self._token
        if current is None or current.access_token != token.access_token:
            return "newer"
        if self.cooldown.held_alone(self.route, alone=_alone(self.store)):
            return "refused_fresh"
        suspect = current is self._replacement
        if suspect and self.cooldown.refused_again(self.route):
            return "refused_fresh"
        self.cooldown.start(new_episode=not suspect)
        self._refused = current
        self._token = None
        self._cancel_timer()
        log.info(
            "token refused upstream; dropped",
            extra={"route": self.route, "event": "invalidated", "source": current.how},
        )
        return "dropped"

    def replayed(self, token: Token, status: int) -> None:
        """A request replayed with ``token`` after a 401 got ``status``.

        A replacement that worked is no suspect: when it is refused later (another
        replica rotated it, a revocation), it is replaced at once, cooldown or not.
        """
        if status != 401 and token is self._replacement:
            self._replacement = None

    async def prime(self) -> Token:
        """Fetch (or load) a token now; used at start-up and by ``authproxy token``."""
        return await self.get()

    def retire(self) -> None:
        """Stop refreshing in the background; a fetch under way still completes.

        For a route being replaced by a reload: its in-flight requests may still
        need :meth:`get` (a 401 replay), but it must not rotate tokens any more.
        """
        self._closed = True
        self._cancel_timer()

    def close(self) -> None:
        self._closed = True
        self._cancel_timer()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # -- fetching --------------------------------------------------------------------

    def _start(self) -> asyncio.Task[Token]:
        # Keep the reference: an unreferenced task can be collected mid-run.
        task = asyncio.get_running_loop().create_task(self._fetch(), name=f"token:{self.route}")
        self._task = task
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Token]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # mark retrieved; waiters got it already

    def _backing_off(self, now: float) -> bool:
        return self._failure is not None and now < self._failure.until

    async def _fetch(self) -> Token:
        started = time.monotonic()
        lock_started = time.monotonic()
        async with self.store.lock(self.key):
            self.events.lock_wait(self.route, time.monotonic() - lock_started)
            previous = self._token or self._refused
            stored: Token | None = await self._load_stored()
            if stored is not None and self._adoptable(stored, previous):
                log_token_event("obtained", self.route, "store", stored, self.clock.time())
                return self._set(replace(stored, how="store") if stored.how != "store" else stored)
            current = self._token
            if current is not None and current.usable(self.clock.time()) and _alone(self.store):
                return self._keep(current)
            if stored is not None and (previous is None or _newer(stored, previous)):
                previous = stored
            log.debug(
                "fetching a token",
                extra={
                    "route": self.route,
                    "grant": self.source.grant,
                    "previous": previous.how if previous else None,
                },
            )
            replacing = self._refused is not None
            try:
                tok = await asyncio.wait_for(
                    self.source.fetch(previous), timeout=self.token_timeout * 2.5
                )
            except UnusableToken as exc:
                self._fail(exc, time.monotonic() - started)
                arrived = exc.token
                if arrived.expires_at is not None and self.clock.time() < arrived.expires_at:
                    # Not cached: the requests waiting for this fetch use it once.
                    return arrived
                raise
            except TokenFetchError as exc:
                self._fail(exc, time.monotonic() - started)
                raise
            except TimeoutError:
                timeout = TokenFetchError("token endpoint did not answer in time", lost=True)
                self._fail(timeout, time.monotonic() - started)
                raise timeout from None
            except Exception as err:  # a bug in a flow must not hang or crash callers
                log.exception("token flow failed unexpectedly", extra={"route": self.route})
                broken = TokenFetchError(f"token flow failed: {type(err).__name__}")
                self._fail(broken, time.monotonic() - started)
                raise broken from None
            # Persist before use: a rotated refresh token must survive a crash.
            try:
                await self.store.save(self.key, tok)
            except Exception as err:
                log.error(
                    "token store save failed (%s); using the token anyway",
                    type(err).__name__,
                    extra={"route": self.route, "exception": type(err).__name__},
                )
        if replacing:
            self._replacement = tok
        self.cooldown.fetched()
        self.events.fetched(self.route, self.source.grant, tok, time.monotonic() - started)
        self.last_refresh = self.clock.time()
        log_token_event(
            "refreshed" if tok.how == "refresh" else "obtained",
            self.route,
            tok.how,
            tok,
            self.last_refresh,
        )
        return self._set(tok)

    async def _load_stored(self) -> Token | None:
        try:
            tok: Token | None = await self.store.load(self.key)
            return tok
        except Exception as exc:  # a store outage must not stop the proxy
            name = type(exc).__name__
            log.warning(
                "token store load failed: %s", name, extra={"route": self.route, "exception": name}
            )
            return None

    def _adoptable(self, stored: Token, previous: Token | None) -> bool:
        """Another process (or a restart) left a token we may use instead of fetching."""
        now = self.clock.time()
        if not stored.usable(now):
            return False
        refused = self._refused
        if refused is not None and stored.access_token == refused.access_token:
            return False
        if previous is not None and stored.access_token == previous.access_token:
            # Same token as ours: only adopt if ours is not the reason we are here.
            at = self.refresh_at(stored)
            return self._token is None and (at is None or now < at)
        at = self.refresh_at(stored)
        return at is None or now < at

    def _keep(self, tok: Token) -> Token:
        """The shared store is down: refreshing alone would revoke the other
        replicas' copy of this token at strict providers (Invoice.ng). Keep it
        until it is refused or expires; look again in STORE_RETRY seconds."""
        now = self.clock.time()
        until = min(now + STORE_RETRY, tok.usable_until or math.inf)
        self._fresh_token, self._fresh_until = tok, until
        self._arm(max(0.0, until - now))
        return tok

    def _set(self, tok: Token) -> Token:
        self._token = tok
        self._refused = None
        self._failure = None
        self._schedule(tok)
        return tok

    def _fail(self, exc: TokenFetchError, seconds: float) -> None:
        attempts = (self._failure.attempts if self._failure else 0) + 1
        now = self.clock.time()
        wait = failure_wait(
            self.backoff, attempts, exc, self.source.grant in REFRESH_GRANTS, self.token_timeout
        )
        self._failure = _Failure(exc, now + wait, attempts)
        self.events.failed(self.route, self.source.grant, exc, seconds)
        event = "unusable" if isinstance(exc, UnusableToken) else "failed"
        self.log_throttle.log(
            log, logging.WARNING, (event,),
            "token request failed: %s; next attempt in %.1fs", exc.message, wait,
            extra={
                "route": self.route, "event": event, "source": self.source.grant,
                "token_status": exc.status,
            },
        )  # fmt: skip
        # An unusable token is retried on demand only: a background retry of a
        # provider that keeps sending them would be a timer loop with no traffic.
        if exc.retryable and not isinstance(exc, UnusableToken):
            self._arm(wait)

    # -- timers ------------------------------------------------------------------------

    def _schedule(self, tok: Token) -> None:
        at = self.refresh_at(tok)
        if at is None:
            self._cancel_timer()
            return
        self._arm(max(0.0, at - self.clock.time()))

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        if self._closed:
            return
        # On the injected clock: a ManualClock runs it when moved past its moment.
        self._timer = call_later(self.clock, min(delay, 86400.0), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed or self._task is not None:
            return
        now = self.clock.time()
        failure = self._failure
        if failure is not None and now < failure.until:
            self._arm(failure.until - now)
            return
        tok = self._token
        at = self.refresh_at(tok) if tok is not None else None
        if tok is None or at is None or now >= at or failure is not None:
            self._start()
        else:
            self._arm(at - now)


def _alone(store: Any) -> bool:
    """True while a shared store cannot coordinate the replicas (Redis down)."""
    return getattr(store, "coordinated", True) is False


def _newer(a: Token, b: Token) -> bool:
    return a.obtained_at > b.obtained_at


__all__ = [
    "EXPIRY_SKEW", "Backoff", "NeedsConsent", "Token", "TokenEvents", "TokenFetchError",
    "TokenManager", "TokenSource", "UnusableToken", "expiry_skew",
]  # fmt: skip
