"""``authproxy serve --workers N``: N processes on one port that behave as one proxy.

Against the strictest fakes (Invoice.ng invalidates a token when it is refreshed;
the B2B API rotates refresh tokens and revokes the family when a used one comes
back), workers that fetched tokens on their own would knock each other out. With
the default memory store, the workers must still make one login per provider and
one token request per expiry window, and ``/metrics`` must add up every worker's
counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.ops.workers import START_GRACE
from tests.conftest import Echo
from tests.fakes import B2B, InvoiceNg, serve
from tests.storekit import ROOT, Load, ProxyProcess, env_for
from tests.test_stores_redis import assert_one_token_request_per_window, b2b_route
from tests.waiting import until


def routes(inv_url: str, b2b_url: str, username: str) -> str:
    # refresh_before 2s with 4 s tokens: a refresh about every 2 s
    return f"""
routes:
  inv:
    refresh_before: 2s
    auth: {{preset: invoice_ng, api_key: "${{env:KEY}}", base_url: {inv_url}/v1/}}
{b2b_route(b2b_url, username)}"""


def log_lines(proc: ProxyProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]


def shm_dir_of(pid: int) -> Path:
    """The supervisor's private directory, as the worker ``pid`` was given it."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            return Path(entry.split(b"=", 1)[1].decode()).parent
    raise AssertionError(f"worker {pid} has no PROMETHEUS_MULTIPROC_DIR")


def worker_pids(proc: ProxyProcess) -> dict[int, int]:
    """The latest pid of each worker, from the supervisor's log."""
    pids: dict[int, int] = {}
    for line in log_lines(proc):
        if line.get("msg") == "worker started":
            pids[int(line["worker_index"])] = int(line["pid"])  # type: ignore[call-overload]
    return pids


async def all_listening(proc: ProxyProcess, workers: int) -> None:
    """Until every worker has bound the port (the admin port is worker 0's alone)."""
    await until(
        lambda: sum(1 for x in log_lines(proc) if x.get("msg") == "authproxy listening") >= workers,
        f"{workers} workers listening",
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def metric_sum(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


async def test_three_workers_make_one_login_and_count_as_one(tmp_path: Path) -> None:
    inv, b2b = InvoiceNg(token_ttl=4), B2B(access_ttl=4)
    async with serve(inv) as inv_url, serve(b2b) as b2b_url:
        env = {"KEY": inv.api_key, "PASSWORD": b2b.password}
        proxy = ProxyProcess(
            tmp_path, "w", routes(inv_url, b2b_url, b2b.username), env, ("--workers", "3")
        )
        proxy.start()
        try:
            await proxy.wait_healthy()
            load = Load()
            urls = [proxy.url + "/inv/invoices", proxy.url + "/b2b/products"]
            await load.run(urls, seconds=7.0, clients=3, fresh=True)
            # The in-flight gauges are written every second: wait for them to settle.
            # The tokens are refreshed in the background all along (ttl 4 s): count
            # the token endpoints' requests at the moment of the snapshot, not later.
            deadline = time.monotonic() + 20
            while True:
                metrics = await proxy.metrics()
                token_requests = len(inv.token_log) + len(b2b.token_log)
                settled = metric_sum(metrics, "authproxy_inflight_requests") == 0 and (
                    metric_sum(metrics, "authproxy_token_requests_total") == token_requests
                )
                if settled or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            pids = worker_pids(proxy)
            assert len(pids) == 3 and all(alive(p) for p in pids.values())
            # This supervisor's private directory (not another authproxy's on the machine)
            private = {shm_dir_of(p) for p in pids.values()}
            assert len(private) == 1 and next(iter(private)).is_dir(), private
        finally:
            code = proxy.stop()
    assert code == 0, proxy.logs()[-3000:]
    assert load.failures == [], load.failures[:5]
    assert load.ok > 150
    # one login per provider, one token request per expiry window, across 3 workers
    for fake in (inv, b2b):
        assert fake.refreshes >= 2
        assert_one_token_request_per_window(fake, min_gap=1.0)
    assert b2b.reuse_detections == 0
    # every worker served: the kernel spread the connections
    served = {line.get("worker") for line in log_lines(proxy) if line.get("msg") == "request"}
    assert served == {0, 1, 2}
    # /metrics (worker 0's admin port) adds up all three workers
    assert metric_sum(metrics, "authproxy_requests_total") == load.ok
    assert metric_sum(metrics, "authproxy_token_requests_total") == token_requests
    assert metric_sum(metrics, "authproxy_inflight_requests") == 0
    # all gone: the workers, and the private store and metrics files
    assert not any(alive(p) for p in pids.values())
    assert "all workers stopped" in proxy.logs()
    assert not next(iter(private)).exists(), "the private store and metrics were left"
    for secret in (inv.api_key, b2b.password):
        assert secret not in proxy.logs()


async def test_a_worker_that_dies_is_started_again(tmp_path: Path, echo: Echo) -> None:
    body = f"routes:\n  e: {{upstream: {echo.url}/, auth: {{type: none}}}}\n"
    proxy = ProxyProcess(tmp_path, "d", body, args=("--workers", "2"))
    proxy.start()
    try:
        await proxy.wait_healthy()
        before = worker_pids(proxy)
        await asyncio.sleep(START_GRACE)  # a death sooner than this is a failed start
        os.kill(before[1], signal.SIGKILL)
        await until(lambda: worker_pids(proxy).get(1) != before[1], "worker 1 started again")
        after = worker_pids(proxy)
        assert after[1] != before[1] and after[0] == before[0]
        load = Load()
        await load.run([proxy.url + "/e/x"], seconds=1.0, clients=2, fresh=True)
        assert load.failures == [] and load.ok > 10
    finally:
        code = proxy.stop()
    assert code == 0, proxy.logs()[-3000:]
    assert f"worker 1 (pid {before[1]}) exited with code -9; starting it again" in proxy.logs()


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("127.0.0.1:0", "--workers needs a fixed listen port"),
        ("unix:/tmp/authproxy-workers-test.sock", "--workers needs a TCP listen address"),
    ],
)
def test_workers_refuse_what_cannot_be_shared(tmp_path: Path, listen: str, message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"listen: {listen}\nroutes:\n  a: {{upstream: http://127.0.0.1:9/, auth: {{type: none}}}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--workers", "2"],
        cwd=ROOT, env=env_for(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


async def test_a_worker_that_cannot_start_stops_the_set(tmp_path: Path) -> None:
    """A port taken by another program: restarting would fail the same way forever."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: nobody may share it
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"listen: 127.0.0.1:{port}\nadmin_listen: false\n"
            "routes:\n  a: {upstream: http://127.0.0.1:9/, auth: {type: none}}\n"
        )
        out = subprocess.run(
            [sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--workers", "2"],
            cwd=ROOT, env=env_for(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert out.returncode == 1
    assert "cannot listen" in out.stderr and "stopping all workers" in out.stderr
    assert "Traceback" not in out.stderr


def slow(arrived: list[str]) -> Any:
    """An upstream handler that notes each arrival, then answers late (or never)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        arrived.append(request.path)
        await asyncio.sleep(30.0 if "hang" in request.path else 1.5)
        return web.Response(body=b"done")

    return handle


async def test_sigterm_to_every_process_drains_and_a_second_one_to_the_supervisor_stops_now(
    tmp_path: Path, echo: Echo
) -> None:
    """systemd's default stop signals the whole cgroup: each worker gets SIGTERM from
    systemd and again from the supervisor. That is still one stop, a drain; only a
    second signal to the supervisor cuts what is in flight."""
    arrived: list[str] = []
    echo.handler = slow(arrived)
    body = f"shutdown_grace: 20s\nroutes:\n  e: {{upstream: {echo.url}/, auth: {{type: none}}}}\n"
    proxy = ProxyProcess(tmp_path, "s", body, args=("--workers", "2"))
    proxy.start()
    try:
        await proxy.wait_healthy()
        await all_listening(proxy, 2)
        pids = worker_pids(proxy)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:

            async def get(path: str) -> tuple[int, bytes]:
                async with s.post(proxy.url + path, data=b"x") as r:
                    return r.status, await r.read()

            calls = [asyncio.create_task(get(f"/e/slow/{i}")) for i in range(6)]
            await until(lambda: len(arrived) == 6, "the slow calls at the upstream")
            assert proxy.proc is not None
            proxy.proc.send_signal(signal.SIGTERM)
            for pid in pids.values():
                os.kill(pid, signal.SIGTERM)
            assert await asyncio.gather(*calls) == [(200, b"done")] * 6
            assert proxy.proc.wait(10) == 0
    finally:
        proxy.stop()
    assert "stopping the workers now" not in proxy.logs()

    await second_signal_cuts(tmp_path, body, arrived)


async def second_signal_cuts(tmp_path: Path, body: str, arrived: list[str]) -> None:
    """SIGTERM to the supervisor, and another as soon as it has taken the first (not
    earlier: the kernel merges a SIGTERM that comes while one is still pending). It
    used to be lost when it came while the supervisor passed the first on, or to kill
    a worker that had not taken SIGUSR1 over yet: the call in flight is cut, at once."""
    proxy = ProxyProcess(tmp_path, "n", body, args=("--workers", "2"))
    proxy.start()
    try:
        await proxy.wait_healthy()
        await all_listening(proxy, 2)
        async with aiohttp.ClientSession() as s:
            hung = asyncio.create_task(s.get(proxy.url + "/e/hang"))
            await until(
                lambda: any("hang" in p for p in arrived), "the hanging call at the upstream"
            )
            assert proxy.proc is not None
            proxy.proc.send_signal(signal.SIGTERM)
            await until(lambda: '"stopping the workers"' in proxy.logs(), "the first signal")
            assert proxy.proc.poll() is None, "the first signal drains"
            began = time.monotonic()
            proxy.proc.send_signal(signal.SIGTERM)
            code = proxy.proc.wait(10)
            took = time.monotonic() - began
            with pytest.raises(aiohttp.ClientError):
                async with await hung as r:
                    await r.read()
    finally:
        proxy.stop()
    assert code == 1 and took < 3, (code, took, proxy.logs()[-3000:])
    assert "stopping the workers now" in proxy.logs()
    # Every worker stopped by itself (an idle one may have finished its drain first):
    # none was killed by SIGUSR1's default action, and the busy one cut its call.
    lines = log_lines(proxy)
    stopped = {x.get("worker") for x in lines if x.get("msg") == "stopped"}
    cut = {x.get("worker") for x in lines if "stopping now" in str(x.get("msg"))}
    assert stopped == {0, 1} and cut and cut <= stopped, proxy.logs()[-3000:]


async def test_stopping_while_a_worker_is_still_starting_is_a_clean_stop(
    tmp_path: Path, echo: Echo
) -> None:
    # Regression (test_a_worker_that_dies_is_started_again failed under load): a
    # SIGTERM that reached a worker before it had set up its signal handler (it
    # was still importing) killed it, and the supervisor exited 1 for that.
    # Worker 1 is held at interpreter start-up, before authproxy's code, for good.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, time\n"
        "if os.environ.get('AUTHPROXY_WORKER') == '1':\n"
        "    open(os.environ['HELD_MARK'], 'w').close()\n"
        "    time.sleep(600)\n"
    )
    mark = tmp_path / "worker-1-held"
    body = f"routes:\n  e: {{upstream: {echo.url}/, auth: {{type: none}}}}\n"
    env = {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "HELD_MARK": str(mark)}
    proxy = ProxyProcess(tmp_path, "s", body, env=env, args=("--workers", "2"))
    proxy.start()
    try:
        await proxy.wait_healthy()  # worker 0 serves
        await until(mark.exists, "worker 1 held at start-up")
        pids = worker_pids(proxy)
    finally:
        code = proxy.stop()
    assert code == 0, proxy.logs()[-3000:]
    assert not alive(pids[1])
    assert "all workers stopped" in proxy.logs()
