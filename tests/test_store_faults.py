"""Faults of a plain Redis under real replicas (``serve`` processes) and a strict
Invoice.ng (every login or refresh invalidates every older token): a paused
Redis must not leave a lock that stalls anybody, and an outage must not start a
login storm. Steady load: one request every 0.1 s per replica."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes import InvoiceNg, serve
from tests.fleetkit import Paced, figures
from tests.redis_topologies import Node
from tests.storekit import ProxyProcess, start_all, stop_all


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "redis")
    n.start()
    try:
        yield n
    finally:
        n.stop()


def config(redis_url: str, fake_url: str, refresh_before: str = "2s") -> str:
    return f"""
token_store:
  type: redis
  url: {redis_url}
routes:
  inv:
    refresh_before: {refresh_before}
    auth:
      preset: invoice_ng
      api_key: ${{env:KEY}}
      base_url: {fake_url}/v1/
"""


async def store_down(proxy: ProxyProcess, until: float) -> object:
    """The token store's readiness once it says down, or as it is at ``until``
    (the loop's time) if it never does."""
    loop = asyncio.get_running_loop()
    while True:
        state = (await readyz(proxy)).get("token_store")
        if isinstance(state, dict) and state.get("state") == "down" or loop.time() >= until:
            return state
        await asyncio.sleep(0.05)


async def readyz(proxy: ProxyProcess) -> dict[str, object]:
    async with aiohttp.ClientSession() as s, s.get(proxy.admin_url + "/readyz") as r:
        doc: dict[str, object] = json.loads(await r.read())
        return doc


async def test_paused_redis_leaves_no_lock_that_stalls_requests_after_it_resumes(
    node: Node, tmp_path: Path
) -> None:
    # SIGSTOP: the replicas' SET NX time out client-side, and Redis runs them when
    # it resumes. That lock has no holder; before, everybody waited out its lease.
    fake = InvoiceNg(token_ttl=3, single_session=True)
    pause_at, pause_for, run_for = 1.5, 3.0, 12.0
    async with serve(fake) as url:
        body = config(f"redis://127.0.0.1:{node.port}/0", url, "1.5s")
        procs = [ProxyProcess(tmp_path, f"p{n}", body, env={"KEY": fake.api_key}) for n in range(2)]
        try:
            await start_all(procs)
            load = Paced()

            async def pause() -> None:
                await asyncio.sleep(pause_at)
                node.pause()
                await asyncio.sleep(pause_for)
                node.resume()

            await asyncio.gather(load.run([p.url + "/inv/x" for p in procs], run_for), pause())
        finally:
            stop_all(procs)
    resumed = pause_at + pause_for
    # Orphans are deleted by their owner once Redis answers (about a second);
    # a request stalls at most for that and one token fetch, never for a lease.
    assert load.longest(since=resumed) < 2.5, figures(load, fake, run_for, 3)
    # and the replicas share the token again: no failures in the last seconds
    late = [x for x in load.after(resumed + 3.0) if x.status != 200]
    assert late == [], late[:5]
    with node.client() as c:
        assert c.keys("authproxy:lock:*") == []


async def test_redis_outage_during_the_refresh_window_starts_no_login_storm(
    node: Node, tmp_path: Path
) -> None:
    # The replicas share one token when Redis stops; its refresh window opens
    # during the outage. Refreshing alone would revoke the other replicas' copy
    # (the strict fake invalidates every older token), and their logins would
    # revoke each other's in turn. Kept until Redis is back, it just works.
    fake = InvoiceNg(token_ttl=10, single_session=True)
    stop_at, back_at, run_for = 1.5, 5.5, 11.0
    async with serve(fake) as url:
        body = config(f"redis://127.0.0.1:{node.port}/0", url, "6s")
        procs = [ProxyProcess(tmp_path, f"o{n}", body, env={"KEY": fake.api_key}) for n in range(3)]
        states: list[object] = []
        try:
            await start_all(procs)
            load = Paced()

            async def outage() -> None:
                loop = asyncio.get_running_loop()
                began = loop.time()
                await asyncio.sleep(stop_at)
                await asyncio.to_thread(node.stop)
                # the replicas see the outage (readiness says so, with a reason) ...
                states.append(await store_down(procs[0], began + back_at - 0.3))
                # ... and it lasts past the opening of the refresh window
                await asyncio.sleep(max(0.0, began + back_at - loop.time()))
                await asyncio.to_thread(node.start)

            await asyncio.gather(load.run([p.url + "/inv/x" for p in procs], run_for), outage())
            states.append((await readyz(procs[0])).get("token_store"))
            gauge = [await p.metrics() for p in procs]
        finally:
            stop_all(procs)
    fig = figures(load, fake, run_for, 10)
    assert fig["failed"] == 0, fig
    assert fake.logins == 1, fig  # the first one only; then refreshes, shared
    # at most a request per replica already under way when one refreshed (replayed)
    assert fig["reused_invalidated"] <= fake.refreshes * len(procs), fig
    down, up = states
    assert isinstance(down, dict) and down["state"] == "down" and down["reason"], states
    assert isinstance(up, dict) and up["state"] == "up", states
    assert all("authproxy_token_store_up 1.0" in g for g in gauge)
    for p in procs:
        logs = p.logs()
        # one line when it went, one when it came back: not one per failed call
        assert logs.count("token store redis at") == 2, logs[-2000:]
        assert logs.count("reachable again") == 1


async def test_redis_down_bounds_logins_to_one_per_cooldown_per_replica(
    node: Node, tmp_path: Path
) -> None:
    # Regression (issue 16, point 2): with Redis down from the start, each login
    # at the single-session fake revoked the other replicas' tokens, and each of
    # them logged in again on the 401: 10.8 logins/s. A token fetched less than
    # refused_cooldown ago is now kept through a 401, which goes to the client.
    fake = InvoiceNg(token_ttl=60, single_session=True)
    run_for, cooldown, replicas = 8.0, 2.0, 3
    node.stop()  # down from the start: the worst case
    async with serve(fake) as url:
        body = config(f"redis://127.0.0.1:{node.port}/0", url).replace(
            "    refresh_before:", f"    refused_cooldown: {cooldown:g}s\n    refresh_before:"
        )
        procs = [
            ProxyProcess(tmp_path, f"d{n}", body, env={"KEY": fake.api_key})
            for n in range(replicas)
        ]
        try:
            await start_all(procs)
            before = fake.logins
            load = Paced()
            await load.run([p.url + "/inv/x" for p in procs], run_for)
            gauge = [await p.metrics() for p in procs]
        finally:
            stop_all(procs)
    fig = figures(load, fake, run_for, cooldown)
    # at most one login per (jittered, so at least) cooldown window per replica
    assert fake.logins - before <= replicas * (run_for / cooldown + 1), fig
    assert fig["failed"] == fig["client_401"], fig  # nothing but passed-through 401s
    assert any('outcome="refused_fresh"' in g for g in gauge), gauge[0][-1500:]
    for p in procs:
        # once per episode, not once per refused request; and no token in the logs
        assert p.logs().count("while the token store is down; keeping it") <= 2, p.logs()[-2000:]
        assert all(t not in p.logs() for t in fake.access_tokens), "token in logs"
