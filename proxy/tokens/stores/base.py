"""Token stores: where tokens live beyond one request, behind one small interface.

- ``memory``: this process only (the default, ``proxy.tokens.stores.memory``).
- ``file``: survives restarts (see ``proxy.tokens.stores.file``).
- ``redis``: shared by replicas, with a refresh lock (see ``proxy.tokens.stores.redis_store``).

The interface is four calls. ``load``/``save`` move whole tokens by key.
``lock(key)`` is held around every fetch: in-process it is free, because the
:class:`~proxy.tokens.manager.TokenManager` already single-flights; across processes it
makes one replica refresh while the others wait and then load its result.
``close`` releases files and connections.

A store never raises out of ``lock``: when the shared lock cannot be had (Redis
down, lock directory not writable) it falls back to a lock of this process, logs
why and counts it, because a proxy that cannot coordinate must still serve.

Persistent stores encode tokens with :class:`~proxy.tokens.stores.codec.TokenCodec`
(Fernet-encrypted when ``token_store.encryption_key`` is set). This module
chooses the store; the stores import only the codec and the memory store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.config.model import TokenStoreConfig
from proxy.tokens.stores.codec import StoreError, TokenCodec
from proxy.tokens.stores.memory import MemoryStore
from proxy.tokens.token import TokenStore

if TYPE_CHECKING:
    from proxy.telemetry.metrics import Metrics


# -- choosing one -----------------------------------------------------------------


def open_store(config: TokenStoreConfig, *, metrics: Metrics | None = None) -> TokenStore:
    """The store that ``token_store`` names. Raises :class:`StoreError` with a
    message for the operator when it cannot be used (bad key, missing package,
    unreadable file)."""
    if config.type == "memory":
        return MemoryStore()
    codec = TokenCodec(config.encryption_key)
    if config.type == "file":
        from proxy.tokens.stores.file import FileStore

        if not config.path:
            raise StoreError("token_store.path is required for a file store")
        return FileStore(config.path, codec=codec, metrics=metrics, lock_wait=2 * config.lock_lease)
    if config.type == "redis":
        from proxy.tokens.stores.redis_store import RedisStore

        if not config.url and config.sentinel is None:
            raise StoreError("token_store.url is required for a redis store")
        return RedisStore(config, codec=codec, metrics=metrics)
    raise StoreError(f"token_store.type {config.type!r} is not one of memory, file, redis")


def describe(config: TokenStoreConfig) -> str:
    """Where tokens go, for messages; never shows a password."""
    if config.type == "file":
        return f"file store {config.path}"
    if config.type == "redis":
        from proxy.tokens.stores.redis_topology import where

        return f"redis store {where(config)}"
    return "memory store"


def store_state(store: object) -> dict[str, object]:
    """The store's health for /readyz and /status (a store without a shared
    backend is always up)."""
    state = getattr(store, "state", None)
    if callable(state):
        view: dict[str, object] = state()
        return view
    kind = "file" if type(store).__name__ == "FileStore" else "memory"
    return {"type": kind, "state": "up"}


def store_line(store: object) -> str:
    """The store's state in words, for the status page."""
    st = store_state(store)
    where = f" at {st['where']}" if st.get("where") else ""
    reason = f" ({st['reason']})" if st.get("reason") else ""
    return f"token store: {st['type']}{where}, {st['state']}{reason}"


__all__ = [
    "MemoryStore", "StoreError", "TokenCodec", "TokenStore", "describe", "open_store",
    "store_line", "store_state",
]  # fmt: skip
