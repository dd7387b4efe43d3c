"""The Redis token store against a real redis-server: replicas (real proxy
processes) share one token and refresh it once per expiry; the lease lock; a
Redis outage mid-run; no secret in logs or in the stored value."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

import proxy.tokens.stores.redis_store as stores_redis
from proxy.config.model import TokenStoreConfig
from proxy.tokens.manager import Token
from proxy.tokens.stores.base import StoreError, TokenCodec, open_store
from tests.conftest import serve_app
from tests.fakes import B2B, InvoiceNg, serve
from tests.fakes.base import AccessToken, FakeProvider, json_response
from tests.redis_fixture import RedisServer, redis, redis_server  # noqa: F401
from tests.storekit import Load, ProxyProcess, start_all, stop_all
from tests.waiting import until

FERNET_KEY = "x7OGRb9hM4IjhPvBeqIBKE95FsqTbIzc3kyrHufomU8="


@pytest.fixture
async def client(redis: RedisServer) -> AsyncIterator[Any]:  # noqa: F811
    c = aioredis.Redis.from_url(redis.url)
    yield c
    await c.aclose()


def redis_store(url: str, lease: str = "15s") -> str:
    return f"""
token_store:
  type: redis
  url: {url}
  lock_lease: {lease}
"""


def invoice_ng_route(url: str) -> str:
    return f"""
  inv:
    refresh_before: 2s
    auth:
      preset: invoice_ng
      api_key: ${{env:KEY}}
      base_url: {url}/v1/
"""


def b2b_route(url: str, username: str) -> str:
    return f"""
  b2b:
    upstream: {url}/api/v1/
    refresh_before: 2s
    auth:
      preset: b2b_jwt
      username: {username}
      password: ${{env:PASSWORD}}
      base_url: {url}/
"""


def assert_one_token_request_per_window(fake: FakeProvider, min_gap: float) -> None:
    """Every token request succeeded (a refresh token presented twice fails at these
    fakes), there was one login, and no two token requests share an expiry window."""
    log = fake.token_log
    assert [r.status for r in log] == [200] * len(log), [(r.grant, r.status) for r in log]
    assert fake.logins == 1
    gaps = [b.time - a.time for a, b in zip(log, log[1:], strict=False)]
    assert all(g >= min_gap for g in gaps), gaps


# -- replicas --------------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [2, 4])
async def test_replicas_share_one_token_per_route_under_load(
    replicas: int,
    redis: RedisServer,  # noqa: F811
    client: Any,
    tmp_path: Path,
) -> None:
    # Invoice.ng invalidates a token the moment it is refreshed, and the B2B API
    # rotates refresh tokens and revokes the whole family when a used one comes
    # back: replicas that refreshed on their own would knock each other out.
    inv, b2b = InvoiceNg(token_ttl=4), B2B(access_ttl=4)
    problems: list[str] = []
    seen: set[str] = set()

    async def stored_before_use(request: web.Request, access: AccessToken) -> web.StreamResponse:
        # The first request carrying a new B2B token: the store must hold that
        # token (and the refresh token that came with it) or a later one already.
        if access.token not in seen:
            seen.add(access.token)
            keys = await client.keys("authproxy:token:b2b:*")
            raw = await client.get(keys[0]) if keys else None
            stored = Token.from_dict(json.loads(raw)) if raw else None
            record = b2b.access_tokens.get(stored.access_token) if stored else None
            if record is None or record.issued_at < access.issued_at:
                problems.append(f"B2B token {len(seen)} reached the API before it was stored")
        return json_response({"ok": True})

    b2b.api_handler = stored_before_use
    async with serve(inv) as inv_url, serve(b2b) as b2b_url:
        body = (
            redis_store(redis.url)
            + "routes:"
            + invoice_ng_route(inv_url)
            + b2b_route(b2b_url, b2b.username)
        )
        env = {"KEY": inv.api_key, "PASSWORD": b2b.password}
        procs = [ProxyProcess(tmp_path, f"p{n}", body, env=env) for n in range(replicas)]
        try:
            await start_all(procs)
            load = Load()
            urls = [p.url + path for p in procs for path in ("/inv/invoices", "/b2b/products")]
            await load.run(urls, seconds=8.0, clients=1)
        finally:
            stop_all(procs)
        (key,) = await client.keys("authproxy:token:b2b:*")
        stored = Token.from_dict(json.loads(await client.get(key)))
    assert load.failures == [], load.failures[:5]
    assert load.ok > 200
    for fake in (inv, b2b):
        assert fake.refreshes >= 3  # several expiries
        # a new token every 1.5-2 s: two token requests closer than 1 s share a window
        assert_one_token_request_per_window(fake, min_gap=1.0)
    assert b2b.reuse_detections == 0
    assert problems == [] and len(seen) >= 4
    # the store holds the last rotation, which the provider still accepts
    assert b2b.refresh_tokens[stored.refresh_token or ""].usable_at(b2b.now())


async def test_redis_outage_mid_run_falls_back_to_memory_and_recovers(
    redis: RedisServer,  # noqa: F811
    client: Any,
    tmp_path: Path,
) -> None:
    fake = InvoiceNg(token_ttl=4)
    async with serve(fake) as url:
        body = redis_store(redis.url) + "routes:" + invoice_ng_route(url)
        procs = [ProxyProcess(tmp_path, f"o{n}", body, env={"KEY": fake.api_key}) for n in range(2)]
        try:
            await start_all(procs)
            load = Load()

            async def outage() -> None:
                await asyncio.sleep(1.5)
                await asyncio.to_thread(redis.stop)
                await asyncio.sleep(3.5)
                await asyncio.to_thread(redis.start)

            await asyncio.gather(
                load.run([p.url + "/inv/invoices" for p in procs], seconds=9.0, clients=1),
                outage(),
            )
            metrics = [await p.metrics() for p in procs]
            recovered = await client.keys("authproxy:token:*")
        finally:
            stop_all(procs)
    assert load.failures == [], load.failures[:5]
    errors = [_counter(m, "authproxy_token_store_errors_total") for m in metrics]
    assert sum(errors) > 0, errors
    for p in procs:
        logs = p.logs()
        # logged once per outage, and the recovery too
        assert len(re.findall(r"token store redis at \S+ unreachable", logs)) <= 1
        assert "reachable again" in logs or "unreachable" not in logs
    assert any("unreachable" in p.logs() for p in procs)
    assert recovered, "no token in Redis after it came back"
    # after recovery the replicas share again: the last two refreshes are spaced
    late = [r for r in fake.token_log if r.time > fake.token_log[-1].time - 3.0]
    assert all(r.status == 200 for r in late)


def _counter(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- the lock ----------------------------------------------------------------------------


async def test_lease_is_renewed_while_held_and_released_only_by_its_owner(
    redis: RedisServer,  # noqa: F811
    client: Any,
) -> None:
    cfg = TokenStoreConfig(type="redis", url=redis.url, lock_lease=1.0)
    a, b = open_store(cfg), open_store(cfg)
    order: list[str] = []
    at: dict[str, float] = {}
    a_holds = asyncio.Event()
    try:

        async def hold_a() -> None:
            async with a.lock("inv:1"):
                order.append("a in")
                a_holds.set()
                await asyncio.sleep(1.8)  # longer than the 1 s lease: renewed meanwhile
                order.append("a out")
                at["a out"] = time.monotonic()

        async def wait_b() -> None:
            await a_holds.wait()
            at["b asks"] = time.monotonic()
            async with b.lock("inv:1"):
                order.append("b in")
                at["b in"] = time.monotonic()

        await asyncio.gather(hold_a(), wait_b())
        assert order == ["a in", "a out", "b in"]
        # b waited for a's release (1.8 s), not for a lease that a let run out (1 s),
        # and got the lock soon after the release, not a lease later
        assert at["b in"] - at["b asks"] >= 1.5, at
        assert at["b in"] - at["a out"] < 0.5, at
        # the lock is gone once released, and a foreign owner value is never deleted
        assert await client.keys("authproxy:lock:*") == []
        await client.set("authproxy:lock:inv:2", "someone-else", px=5000)
        await a.locks.release("authproxy:lock:inv:2", "not-the-owner")
        assert await a.locks.renew("authproxy:lock:inv:2", "not-the-owner") is False
        assert await client.get("authproxy:lock:inv:2") == b"someone-else"
    finally:
        await a.close()
        await b.close()


async def test_encrypted_value_in_redis_does_not_contain_the_token(
    redis: RedisServer,  # noqa: F811
    client: Any,
) -> None:
    cfg = TokenStoreConfig(type="redis", url=redis.url, encryption_key=FERNET_KEY)
    store = open_store(cfg)
    try:
        await store.save("inv:1", Token("access-abc", refresh_token="refresh-xyz"))
        raw = await client.get("authproxy:token:inv:1")
        assert b"access-abc" not in raw and b"refresh-xyz" not in raw
        assert TokenCodec(FERNET_KEY).decode(raw, "x").refresh_token == "refresh-xyz"
        again = open_store(cfg)
        assert (await again.load("inv:1")) == Token("access-abc", refresh_token="refresh-xyz")
        await again.close()
    finally:
        await store.close()


async def test_wrong_redis_password_serves_from_memory_names_wrongpass_and_hides_it(
    redis: RedisServer,  # noqa: F811
    start_proxy: Any,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A password Redis does not expect: every call fails (as with a wrong password).
    url = f"redis://authproxy:s3cret-redis-pw@127.0.0.1:{redis.port}/0"
    fake = InvoiceNg()
    caplog.set_level(logging.INFO)
    async with serve(fake) as base:
        proxy = await start_proxy(
            redis_store(url) + "routes:" + invoice_ng_route(base), env={"KEY": fake.api_key}
        )
        for _ in range(3):
            async with http.get(proxy.url + "/inv/x") as r:
                assert r.status == 200
        text = proxy.metrics.render().decode()
    assert fake.token_requests == 1
    assert _counter(text, "authproxy_token_store_errors_total") > 0
    assert "s3cret-redis-pw" not in caplog.text
    # a wrong password is named as itself, once, not taken for an outage
    assert caplog.text.count(f"127.0.0.1:{redis.port}/0 refused: WRONGPASS") == 1
    assert "unreachable" not in caplog.text


def test_missing_redis_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stores_redis, "aioredis", None)
    with pytest.raises(StoreError, match=r"pip install 'authproxy\[redis\]'"):
        open_store(TokenStoreConfig(type="redis", url="redis://127.0.0.1:1/0"))


# -- keys expire ---------------------------------------------------------------------------


async def test_token_keys_expire_a_little_past_the_token_or_its_refresh_token(
    redis: RedisServer,  # noqa: F811
    client: Any,
) -> None:
    # before: no TTL at all, so the keys of old route fingerprints stayed forever
    store = open_store(TokenStoreConfig(type="redis", url=redis.url))
    now = 1_000_000.0  # the manager's clock, whatever it is: lifetimes are what count
    try:
        await store.save("a:1", Token("t", expires_at=now + 300, obtained_at=now))
        await store.save(
            "b:1",
            Token(
                "t",
                expires_at=now + 300,
                refresh_token="r",
                refresh_expires_at=now + 86400,
                obtained_at=now,
            ),
        )
        await store.save("c:1", Token("t", refresh_token="r", obtained_at=now))
        ttl = {k: await client.pttl(f"authproxy:token:{k}") / 1000 for k in ("a:1", "b:1", "c:1")}
    finally:
        await store.close()
    margin = stores_redis.TTL_MARGIN
    assert 300 + margin - 5 < ttl["a:1"] <= 300 + margin
    assert 86400 + margin - 5 < ttl["b:1"] <= 86400 + margin
    # a refresh token of unknown expiry: kept long (each refresh renews it), not forever
    assert 0 < ttl["c:1"] <= stores_redis.TTL_UNKNOWN


async def test_a_lock_set_by_our_own_retried_call_is_recognised_as_held(
    redis: RedisServer,  # noqa: F811
    client: Any,
) -> None:
    # Found by bench/fleet.py (pause): redis-py retried a SET NX that had timed out
    # while Redis was paused; Redis ran the first one on resume, the retry found the
    # key taken, and every replica waited out a lease for a lock nobody used.
    store = open_store(TokenStoreConfig(type="redis", url=redis.url, lock_lease=10.0))
    try:
        locks = store.locks  # type: ignore[attr-defined]
        await client.set("authproxy:lock:inv:1", f"{locks.owner}:1", px=10000)
        started = time.monotonic()
        value = await locks.acquire("authproxy:lock:inv:1", wait=5.0)
        assert value == f"{locks.owner}:1" and time.monotonic() - started < 0.5
    finally:
        await store.close()


# -- shutdown ----------------------------------------------------------------------------


async def test_shutdown_during_a_token_fetch_releases_the_refresh_lock(
    redis: RedisServer,  # noqa: F811
    client: Any,
    start_proxy: Any,
) -> None:
    # Regression (tests/test_store_faults.py left a lock key behind under load): a
    # SIGTERM while a fetch held the lock cancelled the fetch without waiting for it
    # and closed the Redis client under the release, so the lock stayed for a lease.
    asked = asyncio.Event()
    hold = asyncio.Event()

    async def token(request: web.Request) -> web.Response:
        asked.set()
        await hold.wait()  # a token endpoint that does not answer before the stop
        return web.json_response({"access_token": "t", "expires_in": 60})

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    runner, port = await serve_app(app)
    try:
        proxy = await start_proxy(
            redis_store(redis.url, "30s")
            + f"""
routes:
  cc:
    upstream: http://127.0.0.1:{port}/
    auth:
      type: oauth2_client_credentials
      token_url: http://127.0.0.1:{port}/oauth/token
      client_id: cid
      client_secret: csecret
"""
        )
        await asyncio.wait_for(asked.wait(), 20)
        assert len(await client.keys("authproxy:lock:*")) == 1  # held by the fetch
        await proxy.stop()
        assert await client.keys("authproxy:lock:*") == []
    finally:
        hold.set()
        await runner.cleanup()


async def test_a_lock_call_cut_short_by_a_shutdown_is_deleted_on_close(
    redis: RedisServer,  # noqa: F811
    client: Any,
) -> None:
    # A shutdown cancelled a fetch whose SET NX was on its way: Redis may have run
    # it (its answer was still in flight). Its outcome is unknown, so it is
    # remembered like a call that timed out, and the store's close deletes it.
    assert redis.proc is not None
    store = open_store(TokenStoreConfig(type="redis", url=redis.url, lock_lease=30.0))
    locks = store.locks  # type: ignore[attr-defined]
    name = "authproxy:lock:inv:1"
    os.kill(redis.proc.pid, signal.SIGSTOP)  # so that the call is under way when cut
    try:
        task = asyncio.get_running_loop().create_task(locks.acquire(name, wait=5.0))
        await until(lambda: _queued_for(redis.port) > 0, "the SET NX sent to the paused Redis")
        task.cancel()
        await asyncio.wait({task})
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    assert task.cancelled() and name in locks.uncertain
    # what Redis holds had it run the SET before the cancel reached the client
    await client.set(name, locks.uncertain[name], px=30000)
    await client.set("authproxy:lock:inv:2", "another-replica:1", px=30000)
    await store.close()
    assert await client.keys("authproxy:lock:*") == [b"authproxy:lock:inv:2"]


def _queued_for(port: int) -> int:
    """Bytes waiting in the receive queues of the server side of ``port``'s
    connections (from /proc/net/tcp: local address, state, tx_queue:rx_queue)."""
    queued = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if int(local.rsplit(":", 1)[1], 16) == port and state == "01":  # ESTABLISHED
            queued += int(queues.split(":")[1], 16)
    return queued
