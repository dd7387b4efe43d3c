"""Helpers for the token store and authorize tests: proxies as real processes,
steady load through them, and reading what a store holds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.redis_fixture import free_port

ROOT = Path(__file__).resolve().parent.parent


def env_for(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


class ProxyProcess:
    """``python -m proxy serve -c CONFIG`` on free ports; stopped with SIGTERM."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        body: str,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ):
        self.config = tmp / f"{name}.yaml"
        self.body = textwrap.dedent(body)
        self._choose_ports()
        self.log = tmp / f"{name}.log"
        self.env = env or {}
        #: more ``serve`` options (``--workers 3``)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def _choose_ports(self) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        text = f"listen: 127.0.0.1:{self.port}\nadmin_listen: 127.0.0.1:{self.admin_port}\n"
        self.config.write_text(text + self.body)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", "-c", str(self.config), *self.args],
                cwd=ROOT,
                env=env_for(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        rebinds = 3
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if (
                    self.proc.poll() is not None
                    and rebinds
                    and "address already in use" in (self.logs())
                ):
                    # Another process (a parallel suite) took a port free_port()
                    # found free: not what is under test; other ports, once more.
                    rebinds -= 1
                    self.log.write_text("")
                    self._choose_ports()
                    self.start()
                    continue
                if self.proc.poll() is not None:
                    raise AssertionError(f"proxy exited {self.proc.returncode}:\n{self.logs()}")
                try:
                    async with s.get(self.admin_url + "/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"proxy did not come up:\n{self.logs()}")

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(self.admin_url + "/metrics") as r:
            return await r.text()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def stop_all(procs: list[ProxyProcess]) -> None:
    """SIGTERM to all first, then wait: they shut down side by side."""
    for p in procs:
        if p.proc is not None and p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        p.stop()


async def start_all(procs: list[ProxyProcess]) -> None:
    for p in procs:
        p.start()
    await asyncio.gather(*(p.wait_healthy() for p in procs))


@dataclass
class Load:
    """Steady load: ``clients`` loops per proxy, each one request at a time."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)

    async def run(
        self, urls: list[str], seconds: float, clients: int = 2, fresh: bool = False
    ) -> None:
        """``fresh``: a new connection per request (so SO_REUSEPORT spreads them)."""
        stop_at = time.monotonic() + seconds
        connector = aiohttp.TCPConnector(force_close=fresh)
        async with aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), connector=connector
        ) as s:

            async def loop(url: str) -> None:
                while time.monotonic() < stop_at:
                    try:
                        async with s.get(url) as r:
                            body = await r.read()
                            if r.status == 200:
                                self.ok += 1
                            else:
                                self.failures.append(f"{url} {r.status} {body[:300]!r}")
                    except aiohttp.ClientError as exc:
                        self.failures.append(f"{url} {type(exc).__name__}")
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(loop(u) for u in urls for _ in range(clients)))


def file_entries(path: Path) -> dict[str, Any]:
    """The raw entries of a file store, by key."""
    if not path.exists():
        return {}
    entries: dict[str, Any] = json.loads(path.read_bytes())["tokens"]
    return entries
