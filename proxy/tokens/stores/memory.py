"""The memory token store: this process only (the default)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from proxy.tokens.token import Token


class MemoryStore:
    """Tokens in this process's memory. ``lock`` serialises tasks of this process."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self, key: str) -> Token | None:
        return self._tokens.get(key)

    async def save(self, key: str, token: Token) -> None:
        self._tokens[key] = token

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        # Managers single-flight already; this matters only when two managers share
        # a key in one process (a reload builds the new routes beside the old ones).
        lk = self._locks.setdefault(key, asyncio.Lock())
        async with lk:
            yield

    async def close(self) -> None:
        self._tokens.clear()
