"""Running wrk and reading its ``--latency`` report."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.procs import BenchError, find_tool

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    bytes_per_s: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non2xx: int


def _time_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"cannot read wrk time {text!r}")
    return float(m.group(1)) * _TIME_UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    """Read wrk's ``--latency`` report."""

    def find(pattern: str) -> re.Match[str]:
        m = re.search(pattern, out, re.M)
        if not m:
            raise ValueError(f"wrk output has no match for {pattern!r}:\n{out}")
        return m

    m = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
    requests, seconds = int(m.group(1)), _time_ms(m.group(2) + m.group(3)) / 1000
    rps = float(find(r"^Requests/sec:\s*([\d.]+)").group(1))
    m = find(r"^Transfer/sec:\s*([\d.]+)([KMGT]?)B")
    bytes_per_s = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
    p50 = _time_ms(find(r"^\s*50%\s+(\S+)").group(1))
    p99 = _time_ms(find(r"^\s*99%\s+(\S+)").group(1))
    errors = 0
    m2 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m2:
        errors = sum(int(g) for g in m2.groups())
    m3 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m3.group(1)) if m3 else 0
    return WrkResult(requests, seconds, rps, bytes_per_s, p50, p99, errors, non2xx)


def run_wrk(
    url: str, connections: int, duration: int, sample: Callable[[], None] | None = None
) -> tuple[WrkResult, str]:
    """Run ``wrk -t1``; call ``sample`` every 0.25 s meanwhile (None: leave the CPUs alone)."""
    argv = [
        find_tool("wrk") or "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "--latency",
        url,
    ]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    limit = duration + 15
    deadline = time.monotonic() + limit
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise BenchError(f"wrk did not finish in {limit}s: {' '.join(argv)}")
            if sample is None:
                try:
                    proc.wait(timeout=limit)
                except subprocess.TimeoutExpired:
                    pass
                continue
            sample()
            time.sleep(0.25)
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}): {out.strip()}")
    return parse_wrk(out), out
