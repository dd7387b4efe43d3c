"""``authproxy check --connect``: does the token store really work as configured?

For a Redis store: connect and authenticate (PING), compare cluster mode with
the server's (``INFO cluster`` where the user may run it), read each route's
token key (MOVED when a cluster node is configured as a plain server), write
beside them (READONLY from a replica shows here), and take, renew and release
the refresh lock once with the store's own scripts (NOPERM shows here). Each
failure is one line that names the Redis error, never a password.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

from proxy.config.model import Config
from proxy.config.store import CALL_BOUND
from proxy.tokens.keys import store_key

STEP_TIMEOUT = 4 * CALL_BOUND

T = TypeVar("T")


class _Stop(Exception):
    """A step failed; the rest depends on it."""


async def connect_check(config: Config) -> tuple[list[str], list[str]]:
    """``(what worked, what failed)``, each a line for the operator."""
    ts = config.token_store
    if ts.type != "redis":
        return [f"token store {ts.type}: nothing to connect to"], []
    from proxy.tokens.stores.codec import StoreError, TokenCodec
    from proxy.tokens.stores.redis_store import RedisStore
    from proxy.tokens.stores.redis_topology import name_error

    try:
        store = RedisStore(ts, codec=TokenCodec(None))
    except StoreError as exc:
        return [], [f"token store: {exc}"]
    done: list[str] = []
    failed: list[str] = []
    at = f"token store redis at {store.where}"

    async def step(label: str, aw: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(aw, STEP_TIMEOUT)
        except Exception as exc:
            failed.append(f"{at}: {label}: {name_error(exc)}")
            raise _Stop from None

    client = store.client
    try:
        await step("connect", client.ping())
        done.append(f"{at}: connected and authenticated")
        mismatch = await _cluster_mismatch(client, ts.cluster)
        if mismatch:
            failed.append(f"{at}: {mismatch}")
            raise _Stop
        for route in config.routes:
            key = store_key(route)
            await step(f"route {route.name}: read", client.get(store.key("token", key)))
        probe = store.key("probe", "check")
        await step("write", client.set(probe, "1", px=2000))
        await step("refresh lock script", store.locks.exercise(store.key("lock", "check")))
        done.append(f"{at}: refresh lock taken, renewed and released (scripts allowed)")
    except _Stop:
        pass
    finally:
        await store.close()
    return done, failed


async def _cluster_mismatch(client: Any, cluster: bool) -> str | None:
    """A cluster node configured as a plain server (or the reverse), in words."""
    try:
        info = await asyncio.wait_for(client.info("cluster"), STEP_TIMEOUT)
    except Exception:  # NOPERM on INFO: the route reads show MOVED instead
        return None
    if isinstance(info, dict) and "cluster_enabled" not in info and info:
        info = next(iter(info.values()))  # a cluster client may answer per node
    enabled = isinstance(info, dict) and str(info.get("cluster_enabled", "0")) == "1"
    if enabled and not cluster:
        return "MOVED: this Redis is a cluster node; set token_store.cluster: true"
    if cluster and not enabled:
        return "not a cluster: cluster mode is off on this Redis; set token_store.cluster: false"
    return None


async def connect_main(config: Config) -> int:
    """Print what worked (stdout) and what failed (stderr); exit 1 on a failure."""
    done, failed = await connect_check(config)
    for line in done:
        print(line)
    for line in failed:
        print(f"authproxy: {line}", file=sys.stderr)
    return 1 if failed else 0
