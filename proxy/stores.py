"""Token stores: where tokens live beyond one request, behind one small interface.

- ``memory``: this process only (the default).
- ``file``: survives restarts (see ``proxy.stores_file``).
- ``redis``: shared by replicas, with a refresh lock (see ``proxy.stores_redis``).

The interface is three calls. ``load``/``save`` move whole tokens by key.
``lock(key)`` is held around every fetch: in-process it is free, because the
:class:`~proxy.tokens.TokenManager` already single-flights; across processes it
makes one replica refresh while the others wait and then load its result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from proxy.config import TokenStoreConfig
from proxy.tokens import Token


class TokenStore(Protocol):
    async def load(self, key: str) -> Token | None: ...
    async def save(self, key: str, token: Token) -> None: ...
    def lock(self, key: str) -> AbstractAsyncContextManager[None]: ...
    async def close(self) -> None: ...


class MemoryStore:
    """Tokens in this process's memory."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}

    async def load(self, key: str) -> Token | None:
        return self._tokens.get(key)

    async def save(self, key: str, token: Token) -> None:
        self._tokens[key] = token

    @asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        yield

    async def close(self) -> None:
        self._tokens.clear()


def open_store(config: TokenStoreConfig) -> TokenStore:
    """The store that ``token_store`` names."""
    if config.type == "memory":
        return MemoryStore()
    raise NotImplementedError(f"token_store.type {config.type} is not available yet")
