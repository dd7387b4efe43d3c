"""Token stores: where tokens live beyond one request, behind one small interface.

- ``memory``: this process only (the default).
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

Stored tokens are encrypted with Fernet (the ``cryptography`` package) when
``token_store.encryption_key`` is set; :class:`TokenCodec` does that for every
persistent store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from proxy.config.model import TokenStoreConfig
from proxy.tokens.manager import Token

if TYPE_CHECKING:
    from proxy.telemetry.metrics import Metrics


class StoreError(Exception):
    """The token store cannot be used as configured; the message says what to do."""


class TokenStore(Protocol):
    async def load(self, key: str) -> Token | None: ...
    async def save(self, key: str, token: Token) -> None: ...
    def lock(self, key: str) -> AbstractAsyncContextManager[None]: ...
    async def close(self) -> None: ...


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


# -- encryption -------------------------------------------------------------------

GENERATE_KEY = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


class TokenCodec:
    """Tokens to stored values and back; Fernet-encrypted when a key is given.

    A stored value is a JSON object (plain) or a Fernet token string (encrypted).
    Plain values are still read when a key is set, so that adding a key later
    does not lose the stored refresh token; they are encrypted on the next save.
    """

    def __init__(self, key: str | None) -> None:
        self.encrypted = bool(key)
        self._fernet: Any = None
        if key:
            try:
                from cryptography.fernet import Fernet
            except ImportError:
                raise StoreError(
                    "token_store.encryption_key needs the cryptography package: "
                    "pip install 'authproxy[crypto]'"
                ) from None
            try:
                self._fernet = Fernet(key.strip().encode())
            except (ValueError, TypeError):
                raise StoreError(
                    "token_store.encryption_key is not a Fernet key (32 url-safe "
                    f"base64-encoded bytes); make one with: {GENERATE_KEY}"
                ) from None

    def encode(self, token: Token) -> Any:
        data = token.to_dict()
        if self._fernet is None:
            return data
        raw = json.dumps(data, separators=(",", ":")).encode()
        return self._fernet.encrypt(raw).decode("ascii")

    def encode_text(self, token: Token) -> str:
        value = self.encode(token)
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))

    def decode(self, value: Any, where: str) -> Token:
        """The token in ``value``; ``where`` names it in errors (never its content)."""
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value.lstrip().startswith("{"):
            value = _json_object(value, where)
        if isinstance(value, dict):
            return _token(value, where)
        if not isinstance(value, str):
            raise StoreError(f"{where}: not a stored token")
        if self._fernet is None:
            raise StoreError(f"{where} is encrypted, but token_store.encryption_key is not set")
        from cryptography.fernet import InvalidToken

        try:
            raw = self._fernet.decrypt(value.encode("ascii"))
        except (InvalidToken, ValueError, UnicodeEncodeError):
            raise StoreError(
                f"cannot decrypt {where}: token_store.encryption_key is not the key "
                "it was written with"
            ) from None
        return _token(_json_object(raw.decode("utf-8", "replace"), where), where)


def _json_object(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        raise StoreError(f"{where}: not valid JSON") from None
    if not isinstance(data, dict):
        raise StoreError(f"{where}: not a stored token")
    return data


def _token(data: dict[str, Any], where: str) -> Token:
    if not isinstance(data.get("access_token"), str):
        raise StoreError(f"{where}: not a stored token (no access_token)")
    try:
        return Token.from_dict(data)
    except TypeError:
        raise StoreError(f"{where}: not a stored token") from None


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
