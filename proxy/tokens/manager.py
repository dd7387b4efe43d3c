"""Tokens: the one layer that caches them, in front of the source seam.

Like golang/oauth2, a :class:`TokenSource` only fetches: one method, given the
token it may refresh. Flows in ``proxy.tokens.flows`` are sources. Everything else
(caching, single flight, refreshing early in the background, invalidating a
token an upstream refused, backing off while the provider fails, sharing through
a :class:`~proxy.tokens.stores.base.TokenStore`) is :class:`TokenManager`'s, which
composes one small part per job:

- :class:`~proxy.tokens.cache.TokenCache`: the current token and the refused one;
- :class:`~proxy.tokens.schedule.RefreshSchedule`: the background refresh timer,
  on the injected clock;
- :class:`~proxy.tokens.backoff.Failures`: the backoff after a failed fetch;
- :class:`~proxy.tokens.cooldown.RefusalCooldown`: refused fresh tokens;
- :class:`~proxy.tokens.sync.StoreSync`: the store's lock, load and save;
- :class:`~proxy.tokens.events.TokenReport`: log lines and metric events.

Concurrency: a ``TokenManager`` is safe for concurrent use by the tasks of one
event loop, and only of one. Sources are called by at most one task at a time
per manager; across processes, the store's lock serialises them.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from typing import Literal

from proxy.clock import Clock
from proxy.tokens.backoff import BACKOFF_CAP, Backoff, Failures, as_proxy_error
from proxy.tokens.cache import TokenCache
from proxy.tokens.cooldown import REFUSED_COOLDOWN, RefusalCooldown
from proxy.tokens.report import NullEvents, TokenEvents, TokenReport
from proxy.tokens.schedule import RefreshSchedule, refresh_at
from proxy.tokens.sync import StoreSync
from proxy.tokens.token import (
    EXPIRY_SKEW,
    NeedsConsent,
    Token,
    TokenFetchError,
    TokenSource,
    TokenStore,
    UnusableToken,
    expiry_skew,
)

#: while the shared store is down, how often a kept token's refresh is reconsidered
STORE_RETRY = 2.0

#: what :meth:`TokenManager.refused` did with a refused token
Refusal = Literal["dropped", "newer", "refused_fresh"]


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
        store: TokenStore,
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
        self.clock = clock
        self.refresh_before = refresh_before
        self.token_timeout = token_timeout
        events = events or NullEvents()
        self._cache_event = events.cache
        self.report = TokenReport(route, events, clock)
        self.sync = StoreSync(store, key, self.report, events.lock_wait)
        self.failures = Failures(backoff or Backoff(cap=backoff_cap), clock, token_timeout)
        self.cooldown = RefusalCooldown(refused_cooldown, clock.time)
        self.cache = TokenCache()
        self.schedule = RefreshSchedule(clock, self._due)
        #: the fetch under way, awaited by every caller without a usable token
        self._task: asyncio.Task[Token] | None = None
        self.last_refresh: float | None = None

    # -- what callers use --------------------------------------------------------

    @property
    def token(self) -> Token | None:
        """The cached token, usable or not (for status pages; never for sending)."""
        return self.cache.token

    @property
    def last_error(self) -> str | None:
        error = self.failures.error
        return error.message if error is not None else None

    @property
    def needs_consent(self) -> bool:
        """No refresh token in config or store: ``authproxy authorize`` must run."""
        return isinstance(self.failures.error, NeedsConsent)

    def refresh_at(self, tok: Token) -> float | None:
        """When a background refresh starts (see :func:`proxy.tokens.schedule.refresh_at`)."""
        return refresh_at(tok, self.refresh_before, self.token_timeout)

    async def get(self) -> Token:
        """A usable token, fetching one only when none is cached."""
        cache = self.cache
        tok = cache.token
        now = self.clock.time()
        if tok is not None and tok is cache.fresh_token and now < cache.fresh_until:
            # The common case, kept to two comparisons: usable, not yet due a refresh.
            self._cache_event(self.route, True)
            return tok
        if tok is not None and tok.usable(now):
            self._look(tok, now)
            self._cache_event(self.route, True)
            return tok
        self._cache_event(self.route, False)
        failure = self.failures.last
        if failure is not None and now < failure.until and self._task is None:
            raise as_proxy_error(self.route, failure.error, failure.until - now)
        task = self._task or self._start()
        try:
            return await asyncio.shield(task)
        except TokenFetchError as exc:
            raise as_proxy_error(self.route, exc, self.failures.left()) from None

    def invalidate(self, token: Token) -> bool:
        """An upstream refused ``token``: True when it was dropped (see :meth:`refused`)."""
        return self.refused(token) == "dropped"

    def refused(self, token: Token) -> Refusal:
        """An upstream refused ``token``. Drop it if it is still current.

        - ``dropped``: it was current and is gone; the next :meth:`get` fetches.
        - ``newer``: a newer token had already replaced it; retry with that one.
        - ``refused_fresh``: kept, the 401 goes to the client as is (see
          :class:`~proxy.tokens.cooldown.RefusalCooldown`): a replacement not yet
          seen working (:meth:`replayed`), or with the store down any token,
          fetched less than ``refused_cooldown`` ago. Replacing it hammers the provider.
        """
        current = self.cache.token
        if current is None or current.access_token != token.access_token:
            return "newer"
        if self.cooldown.held_alone(self.route, alone=self.sync.alone):
            return "refused_fresh"
        suspect = current is self.cache.replacement
        if suspect and self.cooldown.refused_again(self.route):
            return "refused_fresh"
        self.cooldown.start(new_episode=not suspect)
        self.cache.drop()
        self.schedule.cancel()
        self.report.dropped(current)
        return "dropped"

    def replayed(self, token: Token, status: int) -> None:
        """A request replayed with ``token`` after a 401 got ``status``.

        A replacement that worked is no suspect: when it is refused later (another
        replica rotated it, a revocation), it is replaced at once, cooldown or not.
        """
        if status != 401 and token is self.cache.replacement:
            self.cache.replacement = None

    async def prime(self) -> Token:
        """Fetch (or load) a token now; used at start-up and by ``authproxy token``."""
        return await self.get()

    def retire(self) -> None:
        """Stop refreshing in the background; a fetch under way still completes.

        For a route being replaced by a reload: its in-flight requests may still
        need :meth:`get` (a 401 replay), but it must not rotate tokens any more.
        """
        self.schedule.close()

    async def close(self) -> None:
        """Stop refreshing, cancel a fetch under way and wait until it has unwound:
        its store lock is released before the store itself closes (a lock left in
        Redis by a stopped replica held the others off for a lease)."""
        self.schedule.close()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})  # its outcome is its waiters'; ours is to wait

    # -- the cache ---------------------------------------------------------------------

    def _look(self, tok: Token, now: float) -> None:
        """``tok`` is usable but was not known fresh: mark it so, or refresh it now."""
        at = self.refresh_at(tok)
        if at is None:
            self.cache.fresh(tok)
        elif now < at:
            assert tok.expires_at is not None
            self.cache.fresh(tok, min(at, tok.expires_at - tok.skew))
        elif self._task is None and not self.failures.backing_off(now):
            self._start()

    def _adoptable(self, stored: Token, previous: Token | None) -> bool:
        """Another process (or a restart) left a token we may use instead of fetching."""
        now = self.clock.time()
        if not stored.usable(now):
            return False
        refused = self.cache.refused
        if refused is not None and stored.access_token == refused.access_token:
            return False
        at = self.refresh_at(stored)
        if previous is not None and stored.access_token == previous.access_token:
            # Same token as ours: only adopt if ours is not the reason we are here.
            return self.cache.token is None and (at is None or now < at)
        return at is None or now < at

    def _keep(self, tok: Token) -> Token:
        """The shared store is down: refreshing alone would revoke the other
        replicas' copy of this token at strict providers (Invoice.ng). Keep it
        until it is refused or expires; look again in STORE_RETRY seconds."""
        now = self.clock.time()
        until = min(now + STORE_RETRY, tok.usable_until or math.inf)
        self.cache.fresh(tok, until)
        self.schedule.arm(max(0.0, until - now))
        return tok

    def _set(self, tok: Token) -> Token:
        self.cache.set(tok)
        self.failures.clear()
        at = self.refresh_at(tok)
        if at is None:
            self.schedule.cancel()
        else:
            self.schedule.at(at)
        return tok

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

    async def _fetch(self) -> Token:
        started = time.monotonic()
        async with self.sync.lock():
            cache = self.cache
            previous = cache.token or cache.refused
            stored = await self.sync.load()
            if stored is not None and self._adoptable(stored, previous):
                self.report.adopted(stored, self.clock.time())
                return self._set(stored if stored.how == "store" else replace(stored, how="store"))
            current = cache.token
            if current is not None and current.usable(self.clock.time()) and self.sync.alone:
                return self._keep(current)
            if stored is not None and (
                previous is None or stored.obtained_at > previous.obtained_at
            ):
                previous = stored
            replacing = cache.refused is not None
            tok, keep = await self._call_source(previous, started)
            if not keep:
                return tok
            # Persist before use: a rotated refresh token must survive a crash.
            await self.sync.save(tok)
        if replacing:
            self.cache.replacement = tok
        self.cooldown.fetched()
        self.last_refresh = self.clock.time()
        self.report.fetched(self.source.grant, tok, time.monotonic() - started, self.last_refresh)
        return self._set(tok)

    async def _call_source(self, previous: Token | None, started: float) -> tuple[Token, bool]:
        """The source's token, and whether to cache it: an unusable token still
        valid is used once by the requests waiting for this fetch, not cached."""
        self.report.fetching(self.source.grant, previous)
        fetch = self.source.fetch(previous, self.failures.error)
        try:
            return await asyncio.wait_for(fetch, timeout=self.token_timeout * 2.5), True
        except UnusableToken as exc:
            self._fail(exc, started)
            arrived = exc.token
            if arrived.expires_at is not None and self.clock.time() < arrived.expires_at:
                return arrived, False
            raise
        except TokenFetchError as exc:
            self._fail(exc, started)
            raise
        except TimeoutError:
            timeout = TokenFetchError("token endpoint did not answer in time", lost=True)
            self._fail(timeout, started)
            raise timeout from None
        except Exception as err:  # a bug in a flow must not hang or crash callers
            self.report.broken()
            broken = TokenFetchError(f"token flow failed: {type(err).__name__}")
            self._fail(broken, started)
            raise broken from None

    def _fail(self, exc: TokenFetchError, started: float) -> None:
        grant = exc.grant or self.source.grant
        wait = self.failures.record(exc, grant)
        self.report.failed(grant, exc, time.monotonic() - started, wait)
        # An unusable token is retried on demand only: a background retry of a
        # provider that keeps sending them would be a timer loop with no traffic.
        if exc.retryable and not isinstance(exc, UnusableToken):
            self.schedule.arm(wait)

    # -- the background refresh ------------------------------------------------------

    def _due(self) -> None:
        """The schedule fired: refresh, unless a fetch runs or the moment moved."""
        if self._task is not None:
            return
        now = self.clock.time()
        failure = self.failures.last
        if failure is not None and now < failure.until:
            self.schedule.arm(failure.until - now)
            return
        tok = self.cache.token
        at = self.refresh_at(tok) if tok is not None else None
        if tok is None or at is None or now >= at or failure is not None:
            self._start()
        else:
            self.schedule.arm(at - now)


__all__ = [
    "EXPIRY_SKEW", "Backoff", "NeedsConsent", "Token", "TokenEvents", "TokenFetchError",
    "TokenManager", "TokenSource", "UnusableToken", "expiry_skew",
]  # fmt: skip
