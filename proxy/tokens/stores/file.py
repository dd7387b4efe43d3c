"""The file token store: one JSON file that survives restarts.

Layout on disk (``token_store.path``, here ``tokens.json``)::

    tokens.json          {"version": 1, "tokens": {"<route>:<fingerprint>": <token>}}
    tokens.json.lock     flock'd around every read-modify-write of tokens.json
    tokens.json.locks/   one flock'd file per key: the refresh lock of lock(key)

``<token>`` is a JSON object, or a Fernet token string when
``token_store.encryption_key`` is set. Every file is created mode 0600.

Writes are atomic (temporary file in the same directory, fsync, rename, fsync
the directory), so a crash leaves the old file or the new one, never half of
one; the stored refresh token survives whatever happens to the process. Two
processes on one host (sidecars, ``authproxy authorize`` beside a running proxy)
serialise their updates on the ``.lock`` file, so neither loses the other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from proxy.tokens.jsondoc import loads_object
from proxy.tokens.stores.codec import StoreError, TokenCodec
from proxy.tokens.token import Token

if TYPE_CHECKING:
    from proxy.telemetry.metrics import Metrics

log = logging.getLogger("authproxy.store")

VERSION = 1


class FileStore:
    """Tokens of every route in one JSON file; ``lock(key)`` works across processes
    on one host (``fcntl.flock``), waiting at most ``lock_wait`` seconds."""

    def __init__(
        self,
        path: str,
        *,
        codec: TokenCodec,
        metrics: Metrics | None = None,
        lock_wait: float = 15.0,
    ) -> None:
        self.path = os.path.abspath(path)
        self.codec = codec
        self.metrics = metrics
        self.lock_wait = lock_wait
        self._dir = os.path.dirname(self.path)
        self._write_lock = self.path + ".lock"
        self._locks_dir = self.path + ".locks"
        self._check()

    # -- the interface ------------------------------------------------------------

    async def load(self, key: str) -> Token | None:
        try:
            entries = await asyncio.to_thread(self._read)
            value = entries.get(key)
            return None if value is None else self.codec.decode(value, self._where(key))
        except (OSError, StoreError) as exc:
            self._count("load")
            log.error("token store read failed: %s", _reason(exc))
            raise

    async def save(self, key: str, token: Token) -> None:
        value = self.codec.encode(token)
        try:
            await asyncio.to_thread(self._update, key, value)
        except (OSError, StoreError) as exc:
            self._count("save")
            log.error("token store write failed: %s", _reason(exc))
            raise

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        try:
            os.makedirs(self._locks_dir, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(self._locks_dir, digest), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            # Without the lock file this process still serves; only the cross-process
            # exclusion is lost, which the store's read-modify-write tolerates.
            self._count("lock")
            log.error("token store lock unavailable (%s); refreshing without it", _reason(exc))
            yield
            return
        try:
            # Poll rather than block in a thread: a cancelled waiter must not go on to
            # take the lock later in a thread nobody awaits.
            deadline = time.monotonic() + self.lock_wait
            delay = 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        self._count("lock")
                        log.warning(
                            "token store lock held by another process for over %.0fs; "
                            "refreshing without it",
                            self.lock_wait,
                        )
                        break
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    async def close(self) -> None:
        pass

    # -- the file ---------------------------------------------------------------------

    def _where(self, key: str) -> str:
        return f"stored token {key.split(':')[0]!r} in {self.path}"

    def _check(self) -> None:
        """At start-up: the file, if any, is ours and readable with our key."""
        try:
            entries = self._read()
        except OSError as exc:
            raise StoreError(f"cannot read token store {self.path}: {_reason(exc)}") from None
        for key, value in entries.items():
            self.codec.decode(value, self._where(key))
        try:
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create token store directory: {_reason(exc)}") from None
        if not os.access(self._dir, os.W_OK):
            raise StoreError(
                f"token store directory {self._dir} is not writable: atomic writes "
                "create a temporary file beside the store"
            )

    def _read(self) -> dict[str, object]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        if not raw.strip():
            return {}
        try:
            doc = loads_object(raw)
        except ValueError:
            raise StoreError(
                f"{self.path} is not a token store file (invalid JSON); move it away"
            ) from None
        except TypeError:
            doc = {}
        tokens = doc.get("tokens")
        if not isinstance(tokens, dict):
            raise StoreError(f"{self.path} is not a token store file; move it away")
        return tokens

    def _update(self, key: str, value: object) -> None:
        os.makedirs(self._dir, mode=0o700, exist_ok=True)
        with self._flock(self._write_lock):
            entries = self._read()
            entries[key] = value
            self._write({"version": VERSION, "tokens": entries})

    def _write(self, doc: dict[str, object]) -> None:
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        name = os.path.basename(self.path)
        # mkstemp creates the file 0600, in the same directory so that rename is atomic
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self._dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # The rename is durable only once the directory entry is on disk.
        dfd = os.open(self._dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dfd)
        except OSError as exc:  # some filesystems refuse fsync on directories
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                raise
        finally:
            os.close(dfd)

    @contextlib.contextmanager
    def _flock(self, path: str) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held only for one small read and write
            yield
        finally:
            os.close(fd)

    def _count(self, operation: str) -> None:
        if self.metrics is not None:
            self.metrics.token_store_errors.labels(operation).inc()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__
