"""Redis as platform teams run it, with real servers from Debian: a Sentinel set
whose master is killed under load, a 3-master Cluster, TLS with client
certificates, and an ACL user with exactly the documented command set. Replicas
are real ``serve`` processes against a strict Invoice.ng (every login or refresh
invalidates every older token); load is one request every 0.1 s per replica."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proxy.config.model import TokenStoreConfig
from proxy.tokens.manager import Token
from proxy.tokens.stores.base import open_store
from tests.fakes import InvoiceNg, serve
from tests.fleetkit import Paced, figures
from tests.redis_fixture import RedisServer, redis, redis_server  # noqa: F401
from tests.redis_topologies import (  # noqa: F401
    Node,
    SentinelSet,
    TLSFiles,
    cluster,
    sentinel_set,
    tls_node,
)
from tests.storekit import ROOT, ProxyProcess, env_for, start_all, stop_all

#: exactly the command set docs/token-stores.md gives
ACL_RULES = (
    "~authproxy:* resetchannels -@all +get +set +del +pexpire +evalsha +eval +script|load +ping"
)


def routes(fake_url: str, refresh_before: str = "2s") -> str:
    return f"""
routes:
  inv:
    refresh_before: {refresh_before}
    auth:
      preset: invoice_ng
      api_key: ${{env:KEY}}
      base_url: {fake_url}/v1/
"""


async def run_replicas(
    tmp_path: Path, store: str, fake: InvoiceNg, seconds: float, during: object = None, n: int = 2
) -> tuple[Paced, list[ProxyProcess]]:
    async with serve(fake) as url:
        body = store + routes(url)
        procs = [ProxyProcess(tmp_path, f"r{i}", body, env={"KEY": fake.api_key}) for i in range(n)]
        try:
            await start_all(procs)
            load = Paced()
            jobs = [load.run([p.url + "/inv/x" for p in procs], seconds)]
            if during is not None:
                jobs.append(during)  # type: ignore[arg-type]
            await asyncio.gather(*jobs)
        finally:
            stop_all(procs)
    return load, procs


def check_connect(tmp_path: Path, store: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    cfg = tmp_path / "check.yaml"
    cfg.write_text(store + routes("http://127.0.0.1:1"))
    r = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--connect", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env_for({"KEY": "k", **(env or {})}),
    )
    return r.returncode, r.stdout + r.stderr


# -- Sentinel ------------------------------------------------------------------------------


async def test_sentinel_failover_under_load_is_followed_and_the_token_stays_shared(
    sentinel_set: SentinelSet,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = sentinel_set
    nodes = ", ".join(f"127.0.0.1:{n.port}" for n in s.sentinels)
    store = f"""
token_store:
  type: redis
  sentinel: {{master_name: {s.name}, sentinels: [{nodes}]}}
"""
    code, out = check_connect(tmp_path, store)
    assert code == 0, out
    # the token's refresh falls around the failover, and it is usable throughout
    fake = InvoiceNg(token_ttl=12, single_session=True)
    failed_over: list[float] = []

    async def kill_master() -> None:
        await asyncio.sleep(2.0)
        s.master.kill()
        started = time.monotonic()
        while s.master_port() != s.replica.port:
            await asyncio.sleep(0.1)
        failed_over.append(time.monotonic() - started)

    load, procs = await run_replicas(tmp_path, store, fake, 14.0, kill_master())
    fig = figures(load, fake, 14.0, 12)
    assert failed_over, "no failover"
    # requests keep working through the failover (a replica keeps its token meanwhile)
    assert fig["failed"] == 0, fig
    # at most a request per replica already under way when one refreshed (replayed)
    assert fig["reused_invalidated"] <= fake.refreshes * len(procs), fig
    # after it the replicas share again: one login in all, the refreshes went
    # through the new master, which holds the one token the provider still accepts
    assert fake.logins == 1 and fake.refreshes >= 1, fig
    with s.replica.client() as c:
        (key,) = c.keys("authproxy:token:*")
        stored = Token.from_dict(json.loads(c.get(key)))
    assert fake.access_tokens[stored.access_token].valid_at(fake.now())
    for p in procs:
        down = p.logs().count('"event": "store_down"')
        assert p.logs().count("reachable again") == down, p.logs()[-3000:]


# -- Cluster -------------------------------------------------------------------------------


async def test_cluster_shares_one_token_with_token_and_lock_in_one_slot(
    cluster: list[Node],  # noqa: F811
    tmp_path: Path,
) -> None:
    for n in cluster:
        with n.client() as c:
            c.flushall()
    store = f"""
token_store:
  type: redis
  url: redis://127.0.0.1:{cluster[0].port}/0
  cluster: true
"""
    code, out = check_connect(tmp_path, store)
    assert code == 0, out
    fake = InvoiceNg(token_ttl=3, single_session=True)
    load, procs = await run_replicas(tmp_path, store, fake, 7.0)
    fig = figures(load, fake, 7.0, 3)
    assert fig["failed"] == 0 and fake.logins == 1 and fake.refreshes >= 2, fig
    # at most a request per replica already under way when one refreshed (replayed)
    assert fig["reused_invalidated"] <= fake.refreshes * len(procs), fig
    keys: list[bytes] = []
    for n in cluster:
        with n.client() as c:
            keys += c.execute_command("KEYS", "authproxy:token:*")
    (key,) = keys
    tag = key.decode().split(":", 2)[2]
    assert tag.startswith("{inv:") and tag.endswith("}")
    with cluster[0].client() as c:
        slot = c.execute_command("CLUSTER KEYSLOT", key)
        assert c.execute_command("CLUSTER KEYSLOT", f"authproxy:lock:{tag}") == slot
    for p in procs:
        assert "MOVED" not in p.logs() and "unreachable" not in p.logs()


async def test_check_connect_detects_a_cluster_config_mismatch(
    cluster: list[Node],  # noqa: F811
    redis: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    plain_on_cluster = (
        f"token_store:\n  type: redis\n  url: redis://127.0.0.1:{cluster[0].port}/0\n"
    )
    code, out = check_connect(tmp_path, plain_on_cluster)
    assert code == 1 and "set token_store.cluster: true" in out, out
    cluster_on_plain = plain_on_cluster.replace(str(cluster[0].port), str(redis.port))
    code, out = check_connect(tmp_path, cluster_on_plain + "  cluster: true\n")
    assert code == 1 and "set token_store.cluster: false" in out, out


async def test_moved_on_a_plain_client_is_named_not_taken_for_an_outage(
    cluster: list[Node],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = TokenStoreConfig(type="redis", url=f"redis://127.0.0.1:{cluster[0].port}/0")
    store = open_store(cfg)
    try:
        # some keys hash to another node: MOVED
        for i in range(20):
            await store.save(f"r{i}:x", Token("t", expires_at=time.time() + 60))
        assert store.state()["reason"].startswith("MOVED"), store.state()  # type: ignore[attr-defined]
    finally:
        await store.close()
    assert "MOVED: this Redis is a cluster node; set token_store.cluster: true" in caplog.text
    assert "unreachable" not in caplog.text


# -- TLS -----------------------------------------------------------------------------------


async def test_tls_with_client_certificate_and_credentials_from_files(
    tls_node: tuple[Node, TLSFiles],  # noqa: F811
    tmp_path: Path,
) -> None:
    node, files = tls_node
    with node.client() as c:
        c.flushall()
        c.execute_command(
            "ACL", "SETUSER", "tlsuser", "reset", "on", ">tls-pw-123", *ACL_RULES.split()
        )
    (tmp_path / "pw").write_text("tls-pw-123\n")
    store = f"""
token_store:
  type: redis
  url: rediss://127.0.0.1:{node.port}/0
  username: tlsuser
  password: ${{file:{tmp_path}/pw}}
  tls: {{ca_file: {files.ca}, client_cert: {files.client_cert}, client_key: {files.client_key}}}
"""
    code, out = check_connect(tmp_path, store)
    assert code == 0, out
    assert "refresh lock taken, renewed and released" in out
    fake = InvoiceNg(token_ttl=3, single_session=True)
    load, procs = await run_replicas(tmp_path, store, fake, 6.0)
    fig = figures(load, fake, 6.0, 3)
    assert fig["failed"] == 0 and fake.logins == 1, fig
    with node.client() as c:
        assert c.keys("authproxy:token:inv:*")
    # without the client certificate the server refuses: named, one clear line
    code, out = check_connect(
        tmp_path,
        store.replace(f", client_cert: {files.client_cert}, client_key: {files.client_key}", ""),
    )
    assert code == 1 and "connect: TLS handshake failed" in out and "tls-pw-123" not in out, out


# -- ACL -----------------------------------------------------------------------------------


async def test_acl_user_with_the_minimal_command_set_works(
    redis: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    redis.command("ACL", "SETUSER", "fleet", "reset", "on", ">fleet-pw-1", *ACL_RULES.split())
    try:
        store = f"""
token_store:
  type: redis
  url: redis://127.0.0.1:{redis.port}/0
  username: fleet
  password: ${{env:REDIS_PW}}
"""
        code, out = check_connect(tmp_path, store, {"REDIS_PW": "fleet-pw-1"})
        assert code == 0, out
        fake = InvoiceNg(token_ttl=3, single_session=True)
        async with serve(fake) as url:
            body = store + routes(url)
            env = {"KEY": fake.api_key, "REDIS_PW": "fleet-pw-1"}
            procs = [ProxyProcess(tmp_path, f"a{i}", body, env=env) for i in range(2)]
            try:
                await start_all(procs)
                load = Paced()
                await load.run([p.url + "/inv/x" for p in procs], 6.0)
            finally:
                stop_all(procs)
        fig = figures(load, fake, 6.0, 3)
        assert fig["failed"] == 0 and fake.logins == 1 and fake.refreshes >= 2, fig
        for p in procs:
            assert "NOPERM" not in p.logs()
        # a wrong password is one clear error, not "unreachable"
        code, out = check_connect(tmp_path, store, {"REDIS_PW": "wrong"})
        assert code == 1 and "WRONGPASS" in out and "unreachable" not in out, out
    finally:
        redis.command("ACL", "DELUSER", "fleet")


async def test_unlock_without_script_permission_does_not_hold_the_lock_for_a_lease(
    redis: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = ACL_RULES.replace(" +evalsha +eval +script|load", "")
    redis.command("ACL", "SETUSER", "noscript", "reset", "on", ">ns-pw-1", *rules.split())
    try:
        cfg = TokenStoreConfig(
            type="redis",
            url=f"redis://127.0.0.1:{redis.port}/0",
            username="noscript",
            password="ns-pw-1",
            lock_lease=10.0,
        )
        a, b = open_store(cfg), open_store(cfg)
        try:
            async with a.lock("inv:1"):
                pass
            started = time.monotonic()
            async with b.lock("inv:1"):
                waited = time.monotonic() - started
            # before: a's release failed and b waited out the 10 s lease
            assert waited < 1.0, waited
            assert a.reachable and b.reachable  # type: ignore[attr-defined]
        finally:
            await a.close()
            await b.close()
        # once per store (each of two), not once per unlock
        assert caplog.text.count("NOPERM: the Redis user may not run scripts") == 2
    finally:
        redis.command("ACL", "DELUSER", "noscript")


def test_the_acl_rules_tested_here_are_the_documented_ones() -> None:
    assert ACL_RULES in (ROOT / "docs" / "token-stores.md").read_text()
