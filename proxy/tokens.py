"""Tokens: the value, the source seam, and the one layer that caches them.

Like golang/oauth2, a :class:`TokenSource` only fetches: one method, given the
token it may refresh. Flows in ``proxy.flows`` are sources. Everything else
(caching, single flight, refreshing early in the background, invalidating a
token an upstream refused, backing off while the provider fails, sharing through
a :class:`~proxy.stores.TokenStore`) lives in :class:`TokenManager`.

Concurrency: a ``TokenManager`` is safe for concurrent use by the tasks of one
event loop, and only of one. Sources are called by at most one task at a time
per manager; across processes, the store's lock serialises them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from proxy.clock import Clock
from proxy.errors import ProxyError, TokenBackoff, TokenUnavailable

log = logging.getLogger("authproxy.tokens")

#: a token this close to its expiry is not sent any more: it could expire in flight
EXPIRY_SKEW = 1.0
#: while the shared store is down, how often a kept token's refresh is reconsidered
STORE_RETRY = 2.0


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and what came with it. Never printed: its repr is masked."""

    access_token: str
    expires_at: float | None = None
    refresh_token: str | None = None
    refresh_expires_at: float | None = None
    obtained_at: float = 0.0
    #: how it was obtained: login, refresh, client_credentials, authorize, config, store
    how: str = "login"

    def __repr__(self) -> str:
        exp = "never" if self.expires_at is None else f"{self.expires_at:.0f}"
        return f"Token(***, expires_at={exp}, how={self.how})"

    def usable(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at - EXPIRY_SKEW

    def refresh_usable(self, now: float) -> bool:
        if not self.refresh_token:
            return False
        return self.refresh_expires_at is None or now < self.refresh_expires_at - EXPIRY_SKEW

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Token:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


class TokenFetchError(Exception):
    """A source could not get a token. ``message`` is safe to show a client.

    ``retryable`` is true for network errors, timeouts, 5xx and 429; 4xx answers
    (bad credentials, ``invalid_client``) are not retried on their own.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class TokenSource(Protocol):
    """One auth flow. ``fetch`` gets a new token, by refresh when ``previous`` allows.

    ``previous`` is the last token known (possibly expired, or refused by an
    upstream); a source that can refresh uses its refresh token or access token,
    and logs in again when the refresh fails.
    """

    #: metrics label for the grant, e.g. ``client_credentials``, ``login``
    grant: str

    async def fetch(self, previous: Token | None) -> Token: ...


class NeedsConsent(TokenFetchError):
    """No refresh token exists yet: a person must run ``authproxy authorize``."""

    def __init__(self, route: str) -> None:
        super().__init__(
            f"no refresh token for route {route}: run `authproxy authorize {route}` once",
            retryable=False,
        )


# -- the caching layer ------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with full jitter, on the injected clock."""

    base: float = 0.5
    cap: float = 60.0
    rand: Callable[[], float] = field(default=random.random)

    def delay(self, attempt: int) -> float:
        ceiling: float = min(self.cap, self.base * (2.0 ** max(0, attempt - 1)))
        # Full jitter, but never less than half the step: replicas spread out and
        # the provider still sees at most one attempt per step.
        return ceiling * (0.5 + 0.5 * self.rand())


@dataclass
class _Failure:
    error: TokenFetchError
    until: float
    attempts: int


class TokenEvents(Protocol):
    """What the manager reports; metrics and logs implement it."""

    def fetched(self, route: str, grant: str, token: Token, seconds: float) -> None: ...
    def failed(self, route: str, grant: str, error: TokenFetchError, seconds: float) -> None: ...
    def cache(self, route: str, hit: bool) -> None: ...
    def lock_wait(self, route: str, seconds: float) -> None: ...


class NullEvents:
    def fetched(self, route: str, grant: str, token: Token, seconds: float) -> None:
        pass

    def failed(self, route: str, grant: str, error: TokenFetchError, seconds: float) -> None:
        pass

    def cache(self, route: str, hit: bool) -> None:
        pass

    def lock_wait(self, route: str, seconds: float) -> None:
        pass


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
    ) -> None:
        self.route = route
        self.source = source
        self.store = store
        self.key = key
        self.clock = clock
        self.refresh_before = refresh_before
        self.token_timeout = token_timeout
        self.events: TokenEvents = events or NullEvents()
        self.backoff = backoff or Backoff()
        self._token: Token | None = None
        #: the token known usable and not due a refresh before ``_fresh_until``
        self._fresh_token: Token | None = None
        self._fresh_until = 0.0
        #: the last token refused upstream; kept for its refresh token, never sent
        self._refused: Token | None = None
        self._task: asyncio.Task[Token] | None = None
        self._timer: asyncio.TimerHandle | None = None
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
        """When a background refresh starts: ``refresh_before`` ahead, at most half
        the token's lifetime ahead, so that short-lived tokens are still used."""
        if tok.expires_at is None:
            return None
        lifetime = max(0.0, tok.expires_at - tok.obtained_at)
        return tok.expires_at - min(self.refresh_before, lifetime / 2)

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
                self._fresh_until = min(at, tok.expires_at - EXPIRY_SKEW)
            elif self._task is None and not self._backing_off(now):
                self._start()
            self.events.cache(self.route, True)
            return tok
        self.events.cache(self.route, False)
        failure = self._failure
        if failure is not None and now < failure.until and self._task is None:
            raise self._as_proxy_error(failure.error, failure.until - now)
        task = self._task or self._start()
        try:
            return await asyncio.shield(task)
        except TokenFetchError as exc:
            failure = self._failure
            wait = failure.until - self.clock.time() if failure else None
            raise self._as_proxy_error(exc, wait) from None

    def invalidate(self, token: Token) -> bool:
        """An upstream refused ``token``. Drop it if it is still current.

        Returns True when it was dropped, False when a newer token had already
        replaced it (then the caller simply retries with the newer one).
        """
        current = self._token
        if current is None or current.access_token != token.access_token:
            return False
        self._refused = current
        self._token = None
        self._cancel_timer()
        log.info(
            "token refused upstream; dropped",
            extra={"route": self.route, "event": "invalidated", "source": current.how},
        )
        return True

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
                _log_event("obtained", self.route, "store", stored, self.clock.time())
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
            try:
                tok = await asyncio.wait_for(
                    self.source.fetch(previous), timeout=self.token_timeout * 2.5
                )
            except TokenFetchError as exc:
                self._fail(exc, time.monotonic() - started)
                raise
            except TimeoutError:
                timeout = TokenFetchError("token endpoint did not answer in time")
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
                    extra={"route": self.route},
                )
        self.events.fetched(self.route, self.source.grant, tok, time.monotonic() - started)
        self.last_refresh = self.clock.time()
        _log_event(
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
            log.warning("token store load failed: %s", type(exc).__name__)
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
        """The shared store is down: an early refresh now would revoke the other
        replicas' copy of this token at strict providers (Invoice.ng), so keep it
        until an upstream refuses it or it expires; look again in a moment."""
        now = self.clock.time()
        until = now + STORE_RETRY
        if tok.expires_at is not None:
            until = max(now, min(until, tok.expires_at - EXPIRY_SKEW))
        self._fresh_token, self._fresh_until = tok, until
        self._arm(until - now)
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
        wait = self.backoff.delay(attempts)
        if exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        self._failure = _Failure(exc, now + wait, attempts)
        self.events.failed(self.route, self.source.grant, exc, seconds)
        log.warning(
            "token request failed: %s; next attempt in %.1fs",
            exc.message,
            wait,
            extra={
                "route": self.route,
                "event": "failed",
                "source": self.source.grant,
                "status": exc.status,
            },
        )
        if exc.retryable:
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
        loop = asyncio.get_running_loop()
        # Timers run on real time; with an injected clock they rarely fire in tests,
        # where requests inside the refresh window trigger the refresh instead.
        self._timer = loop.call_later(min(delay, 86400.0), self._on_timer)

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

    # -- errors -------------------------------------------------------------------------

    def _as_proxy_error(self, exc: TokenFetchError, wait: float | None) -> ProxyError:
        if exc.retryable and wait is not None and wait > 0:
            return TokenBackoff(
                f"{exc.message}; retrying in {wait:.0f}s", route=self.route, retry_after=wait
            )
        return TokenUnavailable(exc.message, route=self.route)


def _log_event(event: str, route: str, source: str, tok: Token, now: float) -> None:
    """A token event line: what happened and where from, never the token."""
    if log.isEnabledFor(logging.INFO):
        expires_in = None if tok.expires_at is None else round(tok.expires_at - now, 1)
        log.info(
            "token %s",
            event,
            extra={"route": route, "event": event, "source": source, "expires_in": expires_in},
        )


def _alone(store: Any) -> bool:
    """True while a shared store cannot coordinate the replicas (Redis down)."""
    return getattr(store, "coordinated", True) is False


def _newer(a: Token, b: Token) -> bool:
    return a.obtained_at > b.obtained_at
