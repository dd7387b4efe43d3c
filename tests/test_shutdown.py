"""Graceful shutdown: ``authproxy serve`` as a real process, SIGTERM under load.

The upstream answers slowly (~1 s). Mid-way through a batch of slow requests and
a steady stream of fast ones, the process gets SIGTERM: readiness turns false,
the listener closes (new connections are refused), every accepted request still
gets its complete 200, and the process exits 0 well within ``shutdown_grace``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import serve_app

BODY = b"0123456789" * 10_000  # 100 kB, so a cut answer would show


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SlowUpstream:
    """An upstream whose /slow answers wait for :attr:`release` (the test says when the
    slow requests may finish) and whose /hang answers never come; it counts arrivals
    so that a test waits for "in flight upstream" instead of sleeping."""

    def __init__(self) -> None:
        self.url = ""
        self.release = asyncio.Event()
        self.arrived: dict[str, int] = {"slow": 0, "hang": 0}
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        for kind in self.arrived:
            if request.path.startswith("/" + kind):
                self.arrived[kind] += 1
                self.changed.set()
                if kind == "slow":
                    await asyncio.wait_for(self.release.wait(), timeout=20)
                else:
                    await asyncio.sleep(30.0)
        return web.Response(body=BODY)

    async def wait_arrived(self, kind: str, n: int, timeout: float = 20) -> None:
        async def arrived() -> None:
            while self.arrived[kind] < n:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(arrived(), timeout)


@pytest.fixture
async def slow_upstream() -> AsyncIterator[SlowUpstream]:
    upstream = SlowUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    runner, port = await serve_app(app)
    upstream.url = f"http://127.0.0.1:{port}"
    yield upstream
    upstream.release.set()
    await runner.cleanup()


async def wait_draining(http: aiohttp.ClientSession, admin: str) -> None:
    """Until /readyz says draining (the signal was handled), or the admin port closed."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            async with http.get(admin + "/readyz") as r:
                if r.status == 503 and (await r.json())["draining"] is True:
                    return
        except aiohttp.ClientError:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("authproxy did not start draining")


async def wait_ready(
    http: aiohttp.ClientSession, admin: str, proc: asyncio.subprocess.Process
) -> None:
    for _ in range(200):
        assert proc.returncode is None, "authproxy exited at start"
        try:
            async with http.get(admin + "/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("authproxy did not become ready")


async def reap(proc: asyncio.subprocess.Process) -> str:
    """Kill the process if it still runs; what it wrote to stderr."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    assert proc.stderr is not None
    return (await proc.stderr.read()).decode()


async def start_serve(
    tmp_path: Path, upstream: str, *, grace: str
) -> tuple[asyncio.subprocess.Process, int, int]:
    """``authproxy serve`` as a process, one route /up/ to ``upstream``."""
    port, admin_port = free_port(), free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"""listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin_port}
shutdown_grace: {grace}
routes:
  up: {{prefix: /up/, upstream: {upstream}/, auth: {{type: none}}}}
"""
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(cfg),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    return proc, port, admin_port


async def test_sigterm_under_load_finishes_accepted_requests_and_exits_0(
    tmp_path: Path, slow_upstream: SlowUpstream
) -> None:
    proc, port, admin_port = await start_serve(tmp_path, slow_upstream.url, grace="6s")
    base, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    # A fresh connection per request: each one is either accepted or refused.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            await wait_ready(http, admin, proc)
            completed: list[str] = []
            refused: list[str] = []
            stop_load = asyncio.Event()
            sent = float("inf")

            async def one(path: str) -> None:
                began = time.monotonic()
                try:
                    # POST: aiohttp's client silently retries an idempotent request
                    # whose connection was cut, which would hide a cut as a refusal.
                    async with http.post(base + path, data=b"x") as r:
                        body = await r.read()
                        # Headers came: the request was accepted and must be whole.
                        assert r.status == 200 and body == BODY, (r.status, len(body))
                        completed.append(path)
                except aiohttp.ClientConnectorError as exc:
                    refused.append(type(exc).__name__)
                except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                    # Reset before any answer: only a connection that raced the
                    # closing listener (still queued in the kernel) may see this;
                    # one opened well before SIGTERM was accepted and must complete.
                    if began < sent - 0.2:
                        raise
                    refused.append(type(exc).__name__)

            async def steady() -> None:
                while not stop_load.is_set():
                    await one("/up/fast")
                    await asyncio.sleep(0.01)

            load = [asyncio.create_task(steady()) for _ in range(3)]
            slow = [asyncio.create_task(one(f"/up/slow/{i}")) for i in range(20)]
            await slow_upstream.wait_arrived("slow", 20)  # all in flight upstream now
            deadline = time.monotonic() + 20
            while len(completed) <= 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            fast_before = len(completed)
            assert fast_before > 5
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)

            # Readiness turns false while in-flight requests drain.
            ready_seen: list[int] = []
            for _ in range(20):
                try:
                    async with http.get(admin + "/readyz") as r:
                        ready_seen.append(r.status)
                        doc = await r.json()
                        if r.status == 503:
                            assert doc["ready"] is False and doc["draining"] is True
                            break
                except aiohttp.ClientError:
                    break
                await asyncio.sleep(0.02)
            assert 503 in ready_seen

            # The listener closes: a new connection is refused while slow ones are held.
            deadline = time.monotonic() + 5
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    break
                assert time.monotonic() < deadline, "the listener stayed open while draining"
                await asyncio.sleep(0.02)
            assert proc.returncode is None and not any(t.done() for t in slow)

            slow_upstream.release.set()
            await asyncio.gather(*slow)
            stop_load.set()
            await asyncio.gather(*load)
            code = await asyncio.wait_for(proc.wait(), timeout=8)
            took = time.monotonic() - sent
        finally:
            log = await reap(proc)
    assert code == 0, log
    assert took < 6, f"exit took {took:.1f}s, past shutdown_grace"
    # All 20 slow requests, accepted before SIGTERM, completed; the refused ones
    # are the load that arrived after the listener closed.
    assert sorted(p for p in completed if "slow" in p) == sorted(f"/up/slow/{i}" for i in range(20))
    assert len(completed) >= fast_before + 20
    assert "ClientConnectorError" in refused
    assert "shutting down" in log and '"stopped"' in log


async def test_a_second_sigterm_stops_at_once(tmp_path: Path, slow_upstream: SlowUpstream) -> None:
    """The first signal drains for up to shutdown_grace (60 s here); an operator who
    sends another does not want to wait for it."""
    proc, port, admin_port = await start_serve(tmp_path, slow_upstream.url, grace="60s")
    async with aiohttp.ClientSession() as http:
        try:
            await wait_ready(http, f"http://127.0.0.1:{admin_port}", proc)
            hung = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/up/hang"))
            await slow_upstream.wait_arrived("hang", 1)
            proc.send_signal(signal.SIGTERM)
            await wait_draining(http, f"http://127.0.0.1:{admin_port}")
            assert proc.returncode is None, "the first signal must drain, not exit"
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), timeout=10)
            took = time.monotonic() - sent
            with pytest.raises(aiohttp.ClientError):
                async with await hung as r:
                    await r.read()
        finally:
            log = await reap(proc)
    assert code == 1, log
    assert took < 3, f"exit took {took:.1f}s after the second signal"
    assert "second signal: stopping now" in log and "Traceback" not in log
