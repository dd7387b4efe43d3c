"""systemd ``Type=notify``: ``authproxy serve`` as a real subprocess, with a real
unix datagram socket of the test as its ``$NOTIFY_SOCKET``, the way systemd runs
it. The socket asks the kernel for each sender's pid (``SO_PASSCRED``), as
systemd does, to check who said what."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy import sd_notify
from tests.redis_fixture import free_port
from tests.storekit import ROOT, env_for

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_PASSCRED"), reason="Linux only")
UCRED = struct.Struct("iII")
ROUTES = "routes:\n  a: {upstream: 'http://127.0.0.1:9/', auth: {type: none}}\n"


@dataclass
class Message:
    pid: int
    states: list[str]


class NotifySocket:
    """The service manager's end: a bound AF_UNIX datagram socket."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(sd_notify.address(name))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout: float = 30) -> Message:
        self.sock.settimeout(timeout)
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        pid = next(
            UCRED.unpack(payload[: UCRED.size])[0]
            for level, kind, payload in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        )
        return Message(pid, data.decode().split("\n"))

    def close(self) -> None:
        self.sock.close()


@contextmanager
def serve(tmp: Path, notify: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    cfg = tmp / "c.yaml"
    # The admin port is chosen at bind: a second free_port() could equal the first.
    cfg.write_text(f"listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:0\n" + ROUTES)
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "-c", str(cfg), *args],
        cwd=ROOT,
        env=env_for({sd_notify.ENV: notify}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def listeners(port: int) -> set[int]:
    """The socket inodes listening on 127.0.0.1:``port`` (``/proc/net/tcp``)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], int(fields[9])
        if state == "0A" and local == f"0100007F:{port:04X}":
            found.add(inode)
    return found


def socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text.rpartition(")")[2].split()[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def can_connect(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        return True


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_after_the_bind_and_stopping_on_sigterm(tmp_path: Path, kind: str) -> None:
    name = str(tmp_path / "notify") if kind == "path" else f"@authproxy-test-{secrets.token_hex(8)}"
    manager = NotifySocket(name)
    try:
        with serve(tmp_path, name) as (proc, port):
            ready = manager.receive()
            assert ready == Message(proc.pid, ["READY=1"])
            assert can_connect(port)  # bound before READY=1, not after
            proc.send_signal(signal.SIGTERM)
            assert manager.receive() == Message(proc.pid, ["STOPPING=1"])
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert "Traceback" not in err
    finally:
        manager.close()


def test_workers_ready_once_all_are_bound_and_only_the_main_process_speaks(
    tmp_path: Path,
) -> None:
    manager = NotifySocket(str(tmp_path / "notify"))
    try:
        with serve(tmp_path, manager.name, "--workers", "3") as (proc, port):
            ready = manager.receive()
            # systemd listens to the main process only (NotifyAccess=main).
            assert ready == Message(proc.pid, ["READY=1"])
            workers = children(proc.pid)
            assert len(workers) == 3
            bound = listeners(port)
            for pid in workers:  # each worker holds a socket listening on the port
                assert socket_inodes(pid) & bound, f"worker {pid} is not listening yet"
            proc.send_signal(signal.SIGTERM)
            assert manager.receive() == Message(proc.pid, ["STOPPING=1"])
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            # Nothing else came: the workers told the supervisor, not systemd.
            manager.sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                manager.sock.recv(4096)
    finally:
        manager.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    assert sd_notify.notify("READY=1", environ={}) is False
    assert sd_notify.Relay.for_workers({}, "/nonexistent") is None


def test_a_service_manager_that_went_away_does_not_stop_the_proxy(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone")  # named, but nobody is bound there
    assert sd_notify.notify("READY=1", environ={sd_notify.ENV: gone}) is False
    with serve(tmp_path, gone) as (proc, port):
        deadline = time.monotonic() + 30
        while True:  # the proxy serves all the same
            try:
                assert can_connect(port)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "cannot notify the service manager" in err
