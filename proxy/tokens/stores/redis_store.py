"""The Redis token store: replicas share one token per route, and refresh it once.

Keys (``token_store.key_prefix``, ``authproxy`` by default; with ``cluster: true``
the part after the kind is a hash tag, ``{<route>:<fingerprint>}``, so that a
route's token and its lock share a slot)::

    authproxy:token:<route>:<fingerprint>   the token (JSON, or Fernet when encrypted)
    authproxy:lock:<route>:<fingerprint>    the refresh lock (see proxy.tokens.stores.redis_lock)

A token key expires a little (:data:`TTL_MARGIN`) past the token's own expiry, or
past its refresh token's when it has one, so that the keys of old route
fingerprints do not stay in Redis forever. A refresh token without a known expiry
is kept :data:`TTL_UNKNOWN` (renewed by every refresh).

The other replicas wait for the lock, then the :class:`~proxy.tokens.manager.TokenManager`
loads the winner's token and adopts it, so no refresh token is presented twice.

**When Redis fails** (down, failing over, a wrong password, NOPERM, MOVED): the
failure is named and logged once (:class:`~proxy.tokens.stores.health.StoreHealth`), and
each replica goes on with its own memory and a lock of its own process. While it
is down no request waits for Redis: a probe task alone asks it again every
:data:`RETRY_AFTER` seconds, and on its way back first deletes the locks that
late-executed calls left (:meth:`RefreshLock.sweep`), then writes back tokens it
obtained meanwhile when Redis holds none newer. :attr:`RedisStore.coordinated`
tells the manager that refreshing early now would revoke the other replicas'
copy of the token with strict providers: it keeps its current token instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from proxy.config.model import TokenStoreConfig
from proxy.config.store import CALL_BOUND
from proxy.tokens.stores.codec import StoreError, TokenCodec
from proxy.tokens.stores.health import StoreHealth
from proxy.tokens.stores.memory import MemoryStore
from proxy.tokens.stores.redis_lock import RefreshLock, Unavailable
from proxy.tokens.stores.redis_topology import build_client, name_error, where
from proxy.tokens.token import Token

if TYPE_CHECKING:
    from proxy.telemetry.metrics import Metrics

log = logging.getLogger("authproxy.store")

T = TypeVar("T")

#: the longest any one Redis call may take (a retry included: twice the socket bound)
CALL_TIMEOUT = CALL_BOUND
#: while Redis is down, how often the probe asks it again
RETRY_AFTER = 1.0
#: a token key lives this much past the token's (or refresh token's) expiry
TTL_MARGIN = 60.0
#: the key of a refresh token whose expiry is unknown lives this long after each save
TTL_UNKNOWN = 30 * 86400.0

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - depends on the installation
    aioredis = None  # type: ignore[assignment]


def ttl_seconds(token: Token) -> float:
    """How long the stored token is worth keeping: its lifetime, plus a margin.

    Measured from ``obtained_at`` on the manager's own clock, so that an injected
    clock in tests and a skewed host clock give the same lifetime."""
    end = token.refresh_expires_at if token.refresh_token else token.expires_at
    if token.refresh_token and token.refresh_expires_at is None:
        return TTL_UNKNOWN
    if end is None:
        return TTL_UNKNOWN
    return max(0.0, end - token.obtained_at) + TTL_MARGIN


class RedisStore:
    """Tokens in Redis, shared by every replica that uses the same Redis and prefix."""

    def __init__(
        self,
        config: TokenStoreConfig,
        *,
        codec: TokenCodec,
        metrics: Metrics | None = None,
    ) -> None:
        if aioredis is None:
            raise StoreError(
                "token_store.type redis needs the redis package: pip install 'authproxy[redis]'"
            )
        self.codec = codec
        self.prefix = config.key_prefix
        self.cluster = config.cluster
        self.lease = max(config.lock_lease, 1.0)
        self.where = where(config)
        try:
            self._redis: Any = build_client(config)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"token_store: cannot use this Redis: {exc}") from None
        self.health = StoreHealth("redis", self.where, metrics)
        self.locks = RefreshLock(self._redis, self._call, self.lease)
        self._local = MemoryStore()
        #: keys saved only locally while Redis was down: written back on recovery
        self._pending: set[str] = set()
        #: the last key used: the probe reads it, so that MOVED or NOPERM on a
        #: route's keys is not taken for a recovery when the probe key works
        self._last_key: str | None = None
        self._probe: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def reachable(self) -> bool:
        """False while Redis is down (tokens then stay in this process)."""
        return self.health.up

    @property
    def coordinated(self) -> bool:
        """True while replicas share tokens and the lock through this store."""
        return self.health.up

    def state(self) -> dict[str, object]:
        return self.health.view()

    # -- the interface ------------------------------------------------------------

    async def load(self, key: str) -> Token | None:
        local = await self._local.load(key)
        if not self.health.up:
            return local
        name = self._last_key = self._key("token", key)
        try:
            raw = await self._call("load", self._redis.get(name))
        except Unavailable:
            return local
        if raw is None:
            return None
        try:
            tok = self.codec.decode(raw, f"stored token {key.split(':')[0]!r} in {self.where}")
        except StoreError as exc:
            self.health.count("load")
            log.error("token store: %s", exc)
            return local
        await self._local.save(key, tok)
        return tok

    async def save(self, key: str, token: Token) -> None:
        await self._local.save(key, token)
        if not self.health.up:
            self._pending.add(key)
            return
        try:
            await self._write(key, token)
        except Unavailable:
            self._pending.add(key)

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        # The local lock first: within this process one holder per key, so that a
        # lock value of ours found in Redis is never one that a task here holds.
        async with self._local.lock(key):
            name = self._key("lock", key)
            value = await self._acquire(name)
            if value is None:
                yield
                return
            renewal = asyncio.get_running_loop().create_task(
                self._renew(name, value), name=f"store-lock-renewal:{key.split(':')[0]}"
            )
            self._keep(renewal)
            try:
                yield
            finally:
                renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
                with contextlib.suppress(Unavailable):
                    await self.locks.release(name, value)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.health.up and self.locks.uncertain:
            # a lock call cut short by the shutdown: leave no lock for the others
            with contextlib.suppress(Unavailable):
                await self.locks.sweep()
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        await self._local.close()

    # -- the lock -----------------------------------------------------------------------

    async def _acquire(self, name: str) -> str | None:
        """The lock's value, held; or None to go on with the local lock only."""
        if not self.health.up:
            return None
        # A live holder renews while its fetch runs, which is bounded by 2.5
        # token_timeouts (the lease is sized from token_timeout): wait that long.
        wait = 3 * self.lease
        try:
            value = await self.locks.acquire(name, wait)
        except Unavailable:
            return None
        if value is None:
            self.health.count("lock")
            log.warning(
                "token store lock held elsewhere for over %.0fs; refreshing without it", wait
            )
        return value

    async def _renew(self, name: str, value: str) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                if not await self.locks.renew(name, value):
                    self.health.count("renew")
                    log.warning("token store lock lost while refreshing (its lease ran out)")
                    return
            except Unavailable:
                return

    # -- Redis calls, outages and recovery -----------------------------------------------

    @property
    def client(self) -> Any:
        """The redis-py client (a Redis, or a RedisCluster)."""
        return self._redis

    def key(self, kind: str, key: str) -> str:
        """The Redis key of ``kind`` (token, lock) for a store key."""
        return self._key(kind, key)

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}:{kind}:{{{key}}}" if self.cluster else f"{self.prefix}:{kind}:{key}"

    async def _write(self, key: str, token: Token) -> None:
        ttl_ms = max(1000, int(ttl_seconds(token) * 1000))
        value = self.codec.encode_text(token)
        await self._call("save", self._redis.set(self._key("token", key), value, px=ttl_ms))

    async def _call(
        self, operation: str, aw: Awaitable[T], let: tuple[type[BaseException], ...] = ()
    ) -> T:
        """One Redis call, bounded; raises :class:`Unavailable` (named, logged once)."""
        try:
            result = await asyncio.wait_for(aw, CALL_TIMEOUT * 2)
        except let:
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(operation, exc)
            raise Unavailable from None
        except Exception as exc:  # redis-py raises a few non-RedisError types (cluster)
            if type(exc).__module__.startswith("redis"):
                self._failed(operation, exc)
                raise Unavailable from None
            raise
        return result

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.health.failed(operation, name_error(exc))
        if self._probe is None and not self._closed:
            probe = asyncio.get_running_loop().create_task(self._recover(), name="store-probe")
            self._probe = probe
            self._keep(probe)

    async def _recover(self) -> None:
        """Until Redis answers: ask every RETRY_AFTER; then clean up and say so."""
        try:
            while not self._closed:
                await asyncio.sleep(RETRY_AFTER)
                if await self._probe_once():
                    break
        finally:
            self._probe = None

    async def _probe_once(self) -> bool:
        # Writes a probe key beside a route's keys (same slot, same ACL pattern),
        # so that READONLY, NOPERM and MOVED are seen as well as a dead server.
        probe = self._key("probe", "probe")
        try:
            await asyncio.wait_for(self._redis.ping(), CALL_TIMEOUT * 2)
            await asyncio.wait_for(self._redis.set(probe, "1", px=2000), CALL_TIMEOUT * 2)
            if self._last_key is not None:
                await asyncio.wait_for(self._redis.get(self._last_key), CALL_TIMEOUT * 2)
            with contextlib.suppress(Unavailable):
                await self.locks.sweep()
        except Exception as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.health.failed("probe", name_error(exc))
            return False
        self.health.ok()
        await self._write_back()
        return True

    async def _write_back(self) -> None:
        """Tokens obtained while Redis was down go to Redis, unless it holds a newer one."""
        for key in list(self._pending):
            self._pending.discard(key)
            tok = await self._local.load(key)
            if tok is None:
                continue
            try:
                raw = await self._call("save", self._redis.get(self._key("token", key)))
                if raw is not None:
                    with contextlib.suppress(StoreError):
                        if self.codec.decode(raw, "stored token").obtained_at >= tok.obtained_at:
                            continue
                await self._write(key, tok)
            except Unavailable:
                self._pending.add(key)
                return

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)  # referenced until done
        task.add_done_callback(self._tasks.discard)
