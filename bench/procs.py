"""Processes the bench starts, and what /proc says about their CPU time and memory."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def find_tool(name: str) -> str | None:
    """A tool on PATH, or in the sbin directories that a non-root PATH often lacks."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


class BenchError(Exception):
    """The bench cannot go on (missing tool, a server that does not start)."""


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _unblock_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


class Processes:
    """Every process the bench starts, each in its own session, stopped in reverse order."""

    def __init__(self, logdir: Path, cwd: Path) -> None:
        self.logdir = logdir
        self.cwd = cwd
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "wb")
        # A Ctrl-C (or SIGTERM) between the fork and the append below would leave a
        # server in its own session that nobody stops: hold both signals until the
        # process is on the list (the child gets them back before it execs).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_unblock_stop_signals,
            )
            self.started.append((name, proc))
        finally:
            log.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.logdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def stop_all(self) -> None:
        for _name, proc in reversed(self.started):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for _name, proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # The group too: an nginx worker or a child of authproxy may outlive its parent.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(timeout=5)
        self.started.clear()


def _read_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its closing one.
    return raw[raw.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Running: not gone, and not a zombie waiting for the bench to reap it."""
    fields = _read_stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _read_stat(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def cpu_seconds(root: int) -> float:
    """utime + stime of the process tree (plus the children the root has reaped)."""
    total = 0
    for pid in tree_pids(root):
        fields = _read_stat(pid)
        if fields:
            # fields[0] is the state (stat field 3): utime is field 14, stime 15, cutime 16, ...
            total += int(fields[11]) + int(fields[12])
            if pid == root:
                total += int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(root: int, pids: list[int] | None = None) -> int:
    """VmRSS summed over the process tree (nginx: master + worker).

    Finding the tree reads all of /proc (milliseconds of CPU): a sampler running
    beside wrk passes the ``pids`` it found once before the run.
    """
    return sum(_status_kib(pid, "VmRSS") for pid in (pids or tree_pids(root)))


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def machine_cpu() -> tuple[float, float, float]:
    """CPU seconds of the whole machine since boot, from /proc/stat: in processes
    (user, nice, system), in interrupts (irq, softirq: loopback traffic is handled
    there, and is charged to no process), and stolen by the hypervisor."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0, 0.0, 0.0
    # cpu user nice system idle iowait irq softirq steal ...
    t = [int(v) / CLK_TCK for v in first[1:9]]
    return t[0] + t[1] + t[2], t[5] + t[6], t[7]


def own_cpu(roots: list[int]) -> float:
    """CPU seconds of this process, its reaped children (wrk) and the trees of ``roots``."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return total + sum(cpu_seconds(pid) for pid in roots)
