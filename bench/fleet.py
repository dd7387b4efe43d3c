#!/usr/bin/env python3
"""Replicas sharing a token through Redis, per topology, under steady load.

Each scenario starts real servers from Debian on loopback (redis-server,
redis-sentinel, ``redis-cli --cluster create``), a strict Invoice.ng fake (every
login or refresh invalidates every older token; tokens last ``--ttl`` seconds),
and 3 ``authproxy serve`` replicas (real processes); then sends one request every
0.1 s per replica for ``--seconds`` (at most 20), with the scenario's fault, and
prints per scenario: failed requests, client 401s, logins and refreshes per token
window, requests that reached the API with an invalidated token, the longest
stall. Everything it starts is stopped at the end of its scenario.

Scenarios: plain, pause (SIGSTOP Redis 3 s), outage (Redis stopped 4 s across
the refresh window), down (Redis stopped from the start: the worst case),
sentinel (the master killed), cluster (3 masters), tls (mTLS), acl (a user with
exactly the documented command set).

Usage: python bench/fleet.py [--only plain,sentinel] [--seconds 15] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes import InvoiceNg, serve  # noqa: E402
from tests.fleetkit import Paced, figures  # noqa: E402
from tests.redis_topologies import (  # noqa: E402
    Node,
    make_cluster,
    make_sentinel_set,
    make_tls_node,
)
from tests.storekit import ProxyProcess, start_all, stop_all  # noqa: E402

ACL = "~authproxy:* resetchannels -@all +get +set +del +pexpire +evalsha +eval +script|load +ping"
Fault = Callable[[], Awaitable[None]]


def route(url: str, ttl: float) -> str:
    return f"""
routes:
  inv:
    refresh_before: {ttl / 2:g}s
    auth:
      preset: invoice_ng
      api_key: ${{env:KEY}}
      base_url: {url}/v1/
"""


async def measure(
    tmp: Path, store: str, seconds: float, ttl: float, fault: Fault | None, env: dict[str, str]
) -> dict[str, Any]:
    fake = InvoiceNg(token_ttl=int(ttl), single_session=True)
    async with serve(fake) as url:
        body = store + route(url, ttl)
        procs = [
            ProxyProcess(tmp, f"r{i}", body, env={"KEY": fake.api_key, **env}) for i in range(3)
        ]
        try:
            await start_all(procs)
            load = Paced(interval=0.1)
            jobs: list[Awaitable[Any]] = [load.run([p.url + "/inv/x" for p in procs], seconds)]
            if fault is not None:
                jobs.append(fault())
            await asyncio.gather(*jobs)
        finally:
            stop_all(procs)
    return figures(load, fake, seconds, ttl)


@contextlib.asynccontextmanager
async def plain(tmp: Path) -> AsyncIterator[tuple[str, Node]]:
    node = Node(tmp / "redis")
    node.start()
    try:
        yield f"token_store:\n  type: redis\n  url: redis://127.0.0.1:{node.port}/0\n", node
    finally:
        node.stop()


async def scenario(name: str, tmp: Path, seconds: float, ttl: float) -> dict[str, Any]:
    env: dict[str, str] = {}
    if name in ("plain", "pause", "outage", "down"):
        async with plain(tmp) as (store, node):

            async def pause() -> None:
                await asyncio.sleep(2.0)
                node.pause()
                await asyncio.sleep(3.0)
                node.resume()

            async def outage() -> None:
                await asyncio.sleep(ttl / 2 - 1.5)  # across the refresh window
                await asyncio.to_thread(node.stop)
                await asyncio.sleep(4.0)
                await asyncio.to_thread(node.start)

            if name == "down":
                node.stop()
            faults: dict[str, Fault | None] = {"pause": pause, "outage": outage}
            return await measure(tmp, store, seconds, ttl, faults.get(name), env)
    if name == "sentinel":
        with make_sentinel_set(tmp) as s:
            nodes = ", ".join(f"127.0.0.1:{n.port}" for n in s.sentinels)
            store = (
                "token_store:\n  type: redis\n"
                f"  sentinel: {{master_name: {s.name}, sentinels: [{nodes}]}}\n"
            )

            async def kill() -> None:
                await asyncio.sleep(2.0)
                s.master.kill()

            return await measure(tmp, store, seconds, ttl, kill, env)
    if name == "cluster":
        with make_cluster() as cl:
            store = (
                f"token_store:\n  type: redis\n  url: redis://127.0.0.1:{cl[0].port}/0\n"
                "  cluster: true\n"
            )
            return await measure(tmp, store, seconds, ttl, None, env)
    if name == "tls":
        with make_tls_node() as (node, files):
            store = (
                f"token_store:\n  type: redis\n  url: rediss://127.0.0.1:{node.port}/0\n"
                f"  tls: {{ca_file: {files.ca}, client_cert: {files.client_cert}, "
                f"client_key: {files.client_key}}}\n"
            )
            return await measure(tmp, store, seconds, ttl, None, env)
    if name == "acl":
        async with plain(tmp) as (_store, node):
            with node.client() as c:
                rules = ["reset", "on", ">bench-pw", *ACL.split()]
                c.execute_command("ACL", "SETUSER", "fleet", *rules)
            store = (
                f"token_store:\n  type: redis\n  url: redis://127.0.0.1:{node.port}/0\n"
                "  username: fleet\n  password: ${env:REDIS_PW}\n"
            )
            return await measure(tmp, store, seconds, ttl, None, {"REDIS_PW": "bench-pw"})
    raise SystemExit(f"unknown scenario {name}")


SCENARIOS = ("plain", "pause", "outage", "down", "sentinel", "cluster", "tls", "acl")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--ttl", type=float, default=6.0, help="token lifetime at the fake")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    seconds = min(args.seconds, 20.0)
    rows: dict[str, dict[str, Any]] = {}
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix=f"authproxy-fleet-{name}-") as tmp:
            started = time.monotonic()
            rows[name] = await scenario(name, Path(tmp), seconds, args.ttl)
            rows[name]["wall_s"] = round(time.monotonic() - started, 1)
        if not args.json:
            print(name, rows[name], flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        cols = ("requests", "failed", "client_401", "logins_per_window", "refreshes_per_window",
                "logins_per_s", "reused_invalidated", "longest_stall_s")  # fmt: skip
        print("\n| scenario | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for name, row in rows.items():
            print(f"| {name} | " + " | ".join(str(row[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
