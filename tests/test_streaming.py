"""A 1 GiB body each way through a real `authproxy serve` process, with flat memory."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.conftest import serve_app

GIB = 1024**3
CHUNK = 1024 * 1024
BLOCK = os.urandom(CHUNK)


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("proxy did not become healthy")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_one_gib_each_way_with_flat_memory(tmp_path: Path) -> None:
    received = hashlib.sha256()
    got = 0

    async def sink(request: web.Request) -> web.Response:
        nonlocal got
        async for chunk in request.content.iter_any():
            received.update(chunk)
            got += len(chunk)
        return web.Response(text=str(got))

    async def source(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(GIB)})
        await resp.prepare(request)
        for _ in range(GIB // CHUNK):
            await resp.write(BLOCK)
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=2 * GIB)
    app.router.add_post("/up/sink", sink)
    app.router.add_get("/up/source", source)
    runner, port = await serve_app(app)
    pport, aport = free_port(), free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{pport}\nadmin_listen: 127.0.0.1:{aport}\n"
        f"limits: {{max_body: 2GiB}}\n"
        f"routes:\n  big:\n    upstream: http://127.0.0.1:{port}/up/\n    auth: {{type: none}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--log-level", "warning"],
        stderr=subprocess.PIPE,
    )
    try:
        wait_ready(f"http://127.0.0.1:{aport}/healthz", proc)
        idle = rss_kib(proc.pid, "VmRSS")

        async def body() -> AsyncIterator[bytes]:
            for _ in range(GIB // CHUNK):
                yield BLOCK

        expected = hashlib.sha256()
        for _ in range(GIB // CHUNK):
            expected.update(BLOCK)
        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"http://127.0.0.1:{pport}/big/sink",
                data=body(),
                headers={"Content-Length": str(GIB)},
            ) as r:
                assert r.status == 200
                assert await r.text() == str(GIB)
            assert received.digest() == expected.digest()

            down = hashlib.sha256()
            n = 0
            async with s.get(f"http://127.0.0.1:{pport}/big/source") as r:
                assert r.status == 200
                async for chunk in r.content.iter_any():
                    down.update(chunk)
                    n += len(chunk)
            assert n == GIB
            assert down.digest() == expected.digest()
        peak = rss_kib(proc.pid, "VmHWM")
        # Flat: the peak stays within a few tens of MiB of idle, never near the body size.
        print(f"proxy RSS idle {idle // 1024} MiB, peak {peak // 1024} MiB over 2 GiB streamed")
        assert peak - idle < 64 * 1024, (idle, peak)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
        await runner.cleanup()
    assert code == 0
