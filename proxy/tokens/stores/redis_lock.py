"""The refresh lock in Redis, made so that a lock nobody holds blocks nobody for long.

``SET lock value NX PX lease`` takes it; a compare-and-delete script releases it,
and a compare-and-expire script renews it every third of the lease while the
holder's fetch runs. What this adds over a plain lease lock, and why:

- **A value its owner recognises after a timeout.** A call that timed out may
  still run: a paused Redis (SIGSTOP, a VM pause, a long fork) executes the queued
  ``SET NX`` when it resumes, and leaves a lock that its client gave up on. Each
  value is ``<store id>:<n>``, and every lock call whose outcome is unknown
  (acquire, renew or release timed out, or the connection broke) is remembered.
  :meth:`RefreshLock.sweep` deletes those, by value, as soon as Redis answers
  again (the store's probe calls it first thing on recovery). An orphan then
  lasts as long as it takes to notice that Redis is back (about a second), not
  a lease.
- **A lease sized from** ``token_timeout`` (see :func:`proxy.config.store.lease_for`),
  which bounds what a holder that died costs the others.
- **Unlock without scripts.** When the Redis user may not run scripts (NOPERM on
  EVALSHA), release and renew fall back to GET and DEL/PEXPIRE (not atomic, but
  the value is checked first and the window is one round trip), so a missing
  permission never holds the lock for a full lease. That is logged once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger("authproxy.store")

T = TypeVar("T")
Call = Callable[..., Awaitable[Any]]

#: how often a waiter asks for the lock again
LOCK_POLL = 0.02

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

try:
    from redis.exceptions import NoPermissionError
except ImportError:  # pragma: no cover - depends on the installation
    NoPermissionError = Exception  # type: ignore[assignment,misc]


class Unavailable(Exception):
    """Redis did not answer (or refused); already logged and counted by the store."""


class RefreshLock:
    """Lease locks for one store. ``call(operation, awaitable, let=...)`` is the
    store's bounded call: it raises :class:`Unavailable` on an outage, and lets the
    exception types in ``let`` through untouched."""

    def __init__(self, client: Any, call: Call, lease: float) -> None:
        self.client = client
        self.call = call
        self.lease = lease
        self.owner = secrets.token_hex(8)
        self._n = itertools.count(1)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._scripts = True
        #: lock values whose last call's outcome is unknown: deleted on recovery
        self.uncertain: dict[str, str] = {}

    @property
    def lease_ms(self) -> int:
        return int(self.lease * 1000)

    async def acquire(self, key: str, wait: float) -> str | None:
        """The value held, or None when another holder kept it for ``wait`` seconds.
        Raises :class:`Unavailable` when Redis does not answer."""
        value = f"{self.owner}:{next(self._n)}"
        deadline = time.monotonic() + wait
        first = True
        while True:
            try:
                ok = await self.call("lock", self.client.set(key, value, nx=True, px=self.lease_ms))
            except (Unavailable, asyncio.CancelledError):
                # It may run later (a paused Redis), or ran while we were cancelled
                # (a shutdown): ours to delete on recovery, or on close.
                self.uncertain[key] = value
                raise
            if ok:
                return value
            if first:
                # redis-py retries a call that timed out on a new connection: the
                # first SET may have run after all (a Redis resuming from a pause)
                # and the retry then found our own value. Ours: we hold it.
                first = False
                if await self.call("lock", self.client.get(key)) == value.encode():
                    return value
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(LOCK_POLL)

    async def renew(self, key: str, value: str) -> bool:
        """Push the lease out again; False when the lock is not ours any more."""
        try:
            if self._scripts:
                try:
                    done = await self.call(
                        "renew", self._renew(keys=[key], args=[value, self.lease_ms]), let=_NOPERM
                    )
                    return bool(done)
                except NoPermissionError:
                    self._no_scripts()
            if await self.call("renew", self.client.get(key)) != value.encode():
                return False
            return bool(await self.call("renew", self.client.pexpire(key, self.lease_ms)))
        except Unavailable:
            self.uncertain[key] = value
            raise

    async def release(self, key: str, value: str) -> None:
        """Delete the lock if it is still ours; a lease that ran out is simply gone."""
        try:
            if self._scripts:
                try:
                    await self.call("unlock", self._release(keys=[key], args=[value]), let=_NOPERM)
                    self.uncertain.pop(key, None)
                    return
                except NoPermissionError:
                    self._no_scripts()
            if await self.call("unlock", self.client.get(key)) == value.encode():
                await self.call("unlock", self.client.delete(key))
            self.uncertain.pop(key, None)
        except Unavailable:
            self.uncertain[key] = value
            raise

    async def sweep(self) -> int:
        """Delete every lock of ours whose outcome was unknown; how many were found."""
        found = 0
        for key, value in list(self.uncertain.items()):
            if self.uncertain.get(key) != value:
                continue
            held = await self.call("unlock", self.client.get(key))
            if held == value.encode():
                found += 1
                await self.release(key, value)
            elif self.uncertain.get(key) == value:
                del self.uncertain[key]
        if found:
            log.warning(
                "token store: deleted %d refresh lock(s) left by calls that timed out "
                "(Redis executed them late)",
                found,
            )
        return found

    async def exercise(self, key: str) -> None:
        """Take, renew and release ``key`` once with the scripts, letting every
        Redis error through (for ``check --connect``)."""
        value = f"{self.owner}:check"
        await self.client.set(key, value, nx=True, px=5000)
        await self._renew(keys=[key], args=[value, 5000])
        await self._release(keys=[key], args=[value])

    def _no_scripts(self) -> None:
        if self._scripts:
            self._scripts = False
            log.error(
                "token store: NOPERM: the Redis user may not run scripts (EVALSHA, SCRIPT "
                "LOAD); the refresh lock falls back to GET and DEL. Give it the command set "
                "in docs/token-stores.md"
            )


_NOPERM: tuple[type[BaseException], ...] = (NoPermissionError,)
