"""The benchmark harness runs end to end, prints its table, and leaves nothing behind.

The performance targets are not asserted here (timed tests on a shared 2-core box
would be flaky); they are read from the bench's output, see docs/performance.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "run.py"
TARGETS = ("direct", "nginx", "authproxy-static", "authproxy-token", "authproxy-workers")


def have(tool: str) -> bool:
    return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()


needs_tools = pytest.mark.skipif(
    not (have("nginx") and have("wrk")),
    reason="the bench needs nginx and wrk (apt-get install nginx wrk)",
)


def bench_leftovers() -> tuple[set[str], set[int]]:
    """Temp dirs of the bench, and live processes whose command line names one."""
    dirs = {p.name for p in Path(tempfile.gettempdir()).glob("authproxy-bench-*")}
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"authproxy-bench-" in cmdline or b"bench/token_server.py" in cmdline:
            pids.add(int(entry.name))
    return dirs, pids


def test_parse_wrk_reads_rate_transfer_and_percentiles() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench.wrk import parse_wrk
    finally:
        sys.path.remove(str(ROOT))
    out = """Running 3s test @ http://127.0.0.1:40715/small
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.38ms  307.30us   6.06ms   97.32%
    Req/Sec    36.67k     9.52k   71.20k    67.74%
  Latency Distribution
     50%   19.00us
     75%   20.00us
     90%   22.00us
     99%    1.59ms
  110000 requests in 3.00s, 1.22GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  36666.67
Transfer/sec:    416.50MB
"""
    res = parse_wrk(out)
    assert res.requests == 110000
    assert res.seconds == pytest.approx(3.0)
    assert res.rps == pytest.approx(36666.67)
    assert res.bytes_per_s == pytest.approx(416.5 * 2**20)
    assert res.p50_ms == pytest.approx(0.019)
    assert res.p99_ms == pytest.approx(1.59)
    assert res.socket_errors == 3
    assert res.non2xx == 7


@needs_tools
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_bench_prints_the_table_for_every_target() -> None:
    dirs_before, _ = bench_leftovers()
    res = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    out = res.stdout
    assert res.returncode == 0, f"exit {res.returncode}\n{out}\n{res.stderr}"
    assert "| target | req/s @50 |" in out
    for name in TARGETS:
        rows = [line for line in out.splitlines() if line.startswith(f"| {name} |")]
        assert rows, f"no row for {name}:\n{out}"
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        assert len(cells) == 11, rows[0]
        assert "failed" not in rows[0] and "n/a" not in cells, rows[0]
        assert float(cells[1].replace(",", "")) > 0, rows[0]  # req/s @50
    assert "### Ratios vs nginx" in out
    assert "### Targets" in out
    dirs_after, pids = bench_leftovers()
    assert not pids, f"bench left processes behind: {sorted(pids)}"
    assert dirs_after <= dirs_before, f"bench left temp dirs: {dirs_after - dirs_before}"


@needs_tools
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_interrupted_bench_stops_everything_it_started() -> None:
    dirs_before, _ = bench_leftovers()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick", "--duration", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the plan is printed before any server starts
            if line.startswith("plan:"):
                break
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(bench_leftovers()[1]) < 2:
            time.sleep(0.1)
        time.sleep(1)
        os.kill(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    dirs_after, pids = bench_leftovers()
    assert not pids, f"bench left processes behind: {sorted(pids)}"
    assert dirs_after <= dirs_before, f"bench left temp dirs: {dirs_after - dirs_before}"
