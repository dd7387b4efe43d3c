"""A real forward proxy (Debian's ``tinyproxy``) for the egress proxy tests.

``forward_proxy`` is a factory fixture: each call starts one tinyproxy on a free
loopback port, in the test's temporary directory, optionally with Basic
authentication or an allow-list of CONNECT ports, and every one started is
stopped when the test ends. ``ForwardProxy.requests()`` reads its log: the
request lines it received (``CONNECT host:port HTTP/1.1``), so that a test can
count what went through the proxy and what did not.

Import the fixture into a test module::

    from tests.forward_proxy import forward_proxy_fixture  # noqa: F401
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.redis_fixture import free_port

_REQUEST = re.compile(r"Request \(file descriptor \d+\): (.+)$")


class ForwardProxy:
    """One tinyproxy process, with its config and log in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        user: str | None = None,
        password: str | None = None,
        connect_ports: list[int] | None = None,
    ) -> None:
        self.dir = directory
        self.port = free_port()
        self.log = directory / "tinyproxy.log"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 60",
            f'LogFile "{self.log}"',
            "LogLevel Connect",
            f'PidFile "{directory / "tinyproxy.pid"}"',
            "MaxClients 64",
            "DisableViaHeader Yes",
        ]
        if user is not None:
            lines.append(f"BasicAuth {user} {password}")
        # Without ConnectPort lines tinyproxy tunnels to any port; with them, only to those.
        lines += [f"ConnectPort {p}" for p in connect_ports or []]
        self.conf = directory / "tinyproxy.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("tinyproxy") or "/usr/sbin/tinyproxy"
        self.proc = subprocess.Popen(
            [binary, "-d", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        raise RuntimeError(f"tinyproxy did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def requests(self) -> list[str]:
        """The request lines the proxy received, in order (``CONNECT h:p HTTP/1.1``)."""
        if not self.log.exists():
            return []
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = _REQUEST.search(line)
            if m:
                found.append(m.group(1).strip())
        return found

    def connects(self) -> list[str]:
        """The targets of the CONNECT requests received, in order (``host:port``)."""
        return [r.split()[1] for r in self.requests() if r.startswith("CONNECT ")]

    async def wait_connects(self, n: int, timeout: float = 5.0) -> list[str]:
        """The CONNECT targets, once at least ``n`` are logged (tinyproxy logs as it
        reads a request; the log line may trail the answer by a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.connects()
            if len(found) >= n or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.02)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture(name="forward_proxy")
def forward_proxy_fixture(tmp_path: Path) -> Iterator[Callable[..., ForwardProxy]]:
    started: list[ForwardProxy] = []

    def make(**options: object) -> ForwardProxy:
        directory = tmp_path / f"tinyproxy-{len(started)}"
        directory.mkdir()
        proxy = ForwardProxy(directory, **options)  # type: ignore[arg-type]
        started.append(proxy)
        proxy.start()
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
