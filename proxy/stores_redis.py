"""The Redis token store: replicas share one token per route, and refresh it once.

Keys (``token_store.key_prefix``, ``authproxy`` by default)::

    authproxy:token:<route>:<fingerprint>   the token (JSON, or Fernet when encrypted)
    authproxy:lock:<route>:<fingerprint>    the refresh lock

The refresh lock is redis-py's :class:`redis.asyncio.lock.Lock`: ``SET NX PX``
with a random owner value, extended by a background task while its holder's
refresh runs, and released only by its owner (a compare-and-delete script). The
other replicas wait for it, then the :class:`~proxy.tokens.TokenManager` loads
the winner's token and adopts it, so no refresh token is ever presented twice.

When Redis is unreachable, each replica goes on with its own memory
(a :class:`~proxy.stores.MemoryStore` that every save also writes through to)
and a lock of its own process. That is logged once per outage, counted in
``authproxy_token_store_errors_total{operation}``, and Redis is tried again at
most every :data:`RETRY_AFTER` seconds, each call bounded by :data:`CALL_TIMEOUT`,
so an outage never makes a request hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar

from yarl import URL

from proxy.stores import MemoryStore, StoreError, TokenCodec
from proxy.tokens import Token

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from proxy.metrics import Metrics

log = logging.getLogger("authproxy.store")

T = TypeVar("T")

#: the longest any one Redis call may take
CALL_TIMEOUT = 1.0
#: while Redis is unreachable, how often it is tried again
RETRY_AFTER = 1.0
#: how often a waiter asks for the lock again
LOCK_POLL = 0.02

try:
    import redis.asyncio as aioredis
    from redis.asyncio.lock import Lock
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import LockError, RedisError
except ImportError:  # pragma: no cover - depends on the installation
    aioredis = None  # type: ignore[assignment]


class RedisStore:
    """Tokens in Redis, shared by every replica that uses the same ``url`` and prefix."""

    def __init__(
        self,
        url: str,
        *,
        codec: TokenCodec,
        metrics: Metrics | None = None,
        prefix: str = "authproxy",
        lease: float = 15.0,
    ) -> None:
        if aioredis is None:
            raise StoreError(
                "token_store.type redis needs the redis package: pip install 'authproxy[redis]'"
            )
        self.codec = codec
        self.metrics = metrics
        self.prefix = prefix
        self.lease = max(lease, 1.0)
        self.where = _safe_url(url)
        try:
            self._redis: Any = aioredis.Redis.from_url(
                url,
                socket_timeout=CALL_TIMEOUT,
                socket_connect_timeout=CALL_TIMEOUT / 2,
                # One quick retry replaces a pooled connection that a Redis restart
                # broke; more would only stretch an outage's latency.
                retry=Retry(NoBackoff(), 1),
                health_check_interval=0,
            )
        except ValueError as exc:
            raise StoreError(f"token_store.url is not a Redis URL: {exc}") from None
        self._local = MemoryStore()
        self._down = False
        self._retry_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def reachable(self) -> bool:
        """False while the last Redis call failed (tokens then stay in this process)."""
        return not self._down

    # -- the interface ------------------------------------------------------------

    async def load(self, key: str) -> Token | None:
        local = await self._local.load(key)
        if self._skip():
            return local
        try:
            raw = await self._call("load", self._redis.get(self._key("token", key)))
        except _Unavailable:
            return local
        if raw is None:
            return None
        try:
            tok = self.codec.decode(raw, f"stored token {key.split(':')[0]!r} in {self.where}")
        except StoreError as exc:
            self._count("load")
            log.error("token store: %s", exc)
            return local
        await self._local.save(key, tok)
        return tok

    async def save(self, key: str, token: Token) -> None:
        await self._local.save(key, token)
        if self._skip():
            return
        with contextlib.suppress(_Unavailable):
            await self._call(
                "save", self._redis.set(self._key("token", key), self.codec.encode_text(token))
            )

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        held = await self._acquire(key)
        if held is None:
            async with self._local.lock(key):
                yield
            return
        renewal = asyncio.get_running_loop().create_task(
            self._renew(held), name=f"store-lock-renewal:{key.split(':')[0]}"
        )
        self._tasks.add(renewal)  # referenced until done: see the task's done callback
        renewal.add_done_callback(self._tasks.discard)
        try:
            yield
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            # Only the owner's value is deleted; a lease that ran out is simply gone.
            with contextlib.suppress(_Unavailable, LockError):
                await self._call("unlock", held.release())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        await self._local.close()

    # -- the lock -----------------------------------------------------------------------

    async def _acquire(self, key: str) -> Any:
        """The Redis lock, held; or None to use a local lock instead."""
        if self._skip():
            return None
        lk = Lock(
            self._redis,
            self._key("lock", key),
            timeout=self.lease,
            sleep=LOCK_POLL,
            blocking=True,
            # A dead holder's lease runs out within one lease; a live one renews only
            # while its (time-bounded) refresh runs. Past two leases, give up waiting.
            blocking_timeout=2 * self.lease,
            thread_local=False,
            raise_on_release_error=False,
        )
        try:
            ok = await lk.acquire()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("lock", exc)
            return None
        self._ok()
        if not ok:
            self._count("lock")
            log.warning(
                "token store lock held elsewhere for over %.0fs; refreshing without it",
                2 * self.lease,
            )
            return None
        return lk

    async def _renew(self, lk: Any) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self._call("renew", lk.reacquire())
            except _Unavailable:
                return
            except LockError as exc:  # LockNotOwnedError: the lease ran out meanwhile
                self._count("renew")
                log.warning("token store lock lost while refreshing (%s)", type(exc).__name__)
                return

    # -- Redis calls and outages ---------------------------------------------------------

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}:{kind}:{key}"

    def _skip(self) -> bool:
        """While Redis is down, go local at once until the next retry is due."""
        return self._down and time.monotonic() < self._retry_at

    async def _call(self, operation: str, aw: Awaitable[T]) -> T:
        try:
            result = await asyncio.wait_for(aw, CALL_TIMEOUT * 2)
        except LockError:
            raise  # Redis answered: the lock is not ours (any more); not an outage
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(operation, exc)
            raise _Unavailable from None
        self._ok()
        return result

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._count(operation)
        self._retry_at = time.monotonic() + RETRY_AFTER
        if not self._down:
            self._down = True
            # The class name and the host only: a Redis error can quote the URL.
            log.warning(
                "token store redis at %s unreachable (%s); each replica uses its own "
                "memory until it is back",
                self.where,
                type(exc).__name__,
            )

    def _ok(self) -> None:
        if self._down:
            self._down = False
            log.warning("token store redis at %s is reachable again", self.where)

    def _count(self, operation: str) -> None:
        if self.metrics is not None:
            self.metrics.token_store_errors.labels(operation).inc()


class _Unavailable(Exception):
    """Redis did not answer; already logged and counted."""


def _safe_url(url: str) -> str:
    """host:port/db of a Redis URL, without user or password."""
    try:
        u = URL(url)
    except ValueError:
        return "redis"
    if u.scheme == "unix":
        return f"unix:{u.path}"
    db = u.path.strip("/") or "0"
    return f"{u.host}:{u.port or 6379}/{db}"
