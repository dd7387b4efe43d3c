"""A route's token in the token store: the lock around each fetch, the token
another process left, and the save before use.

A store outage never stops the proxy: a load that fails finds nothing, a save
that fails is logged and the token used anyway.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from proxy.tokens.report import TokenReport
from proxy.tokens.token import Token, TokenStore


class StoreSync:
    """The ``key`` of one route's token in ``store``."""

    def __init__(
        self,
        store: TokenStore,
        key: str,
        report: TokenReport,
        lock_wait: Callable[[str, float], None],
    ) -> None:
        self.store = store
        self.key = key
        self.report = report
        self._lock_wait = lock_wait

    @property
    def alone(self) -> bool:
        """True while a shared store cannot coordinate the replicas (Redis down)."""
        return getattr(self.store, "coordinated", True) is False

    @asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        """The store's refresh lock of this key, its wait reported."""
        started = time.monotonic()
        async with self.store.lock(self.key):
            self._lock_wait(self.report.route, time.monotonic() - started)
            yield

    async def load(self) -> Token | None:
        """The stored token; None when there is none or the store fails."""
        try:
            return await self.store.load(self.key)
        except Exception as exc:  # a store outage must not stop the proxy
            self.report.load_failed(exc)
            return None

    async def save(self, tok: Token) -> None:
        """Persist ``tok`` before it is used: a rotated refresh token must survive a crash."""
        try:
            await self.store.save(self.key, tok)
        except Exception as exc:
            self.report.save_failed(exc)
