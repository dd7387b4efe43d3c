"""Per-target figures, the markdown tables, and the targets of the performance issue."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import rss_kib, tree_pids

DIRECT, NGINX, STATIC, TOKEN = "direct", "nginx", "authproxy-static", "authproxy-token"
#: ``serve --workers N`` on the static route: only with the bench's ``--workers N``,
#: shown for scale, not checked against the one-process targets
WORKERS = "authproxy-workers"
ALL_TARGETS = (DIRECT, NGINX, STATIC, TOKEN, WORKERS)
DEFAULT_TARGETS = (DIRECT, NGINX, STATIC, TOKEN)
AUTHPROXY_TARGETS = (STATIC, TOKEN)

# The targets of the performance issue; "nginx" is the nginx measured in the same run.
MIN_RPS_VS_NGINX = 0.25
MAX_CPU_US = 60.0
# The 60 us against nginx's ~10 us on its machine: the same bound, machine-neutral.
MAX_CPU_VS_NGINX = 6.0
MAX_ADDED_P50_MS = 0.15
MAX_ADDED_P99_MS = 1.0
MIN_MBS_VS_NGINX = 0.8
MAX_RSS_IDLE_MIB = 40.0
MAX_RSS_LOAD_MIB = 60.0
# "p99 of the refreshing route no worse than the static one": equal up to noise.
TOKEN_P99_TOLERANCE = 1.10
TOKEN_P99_SLACK_MS = 0.1


@dataclass
class Target:
    name: str
    base: str  # URL to which small / big / auth are appended
    pid: int  # root of the process tree whose CPU and RSS are counted
    expect_auth: str  # prefix of the Authorization header the upstream must see
    failed: str = ""
    rss_idle_kib: int = 0
    rss_load_kib: int = 0
    rps: list[float] = field(default_factory=list)
    p99_50: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    mbs: list[float] = field(default_factory=list)
    p50_1: list[float] = field(default_factory=list)
    p99_1: list[float] = field(default_factory=list)
    added_p50: list[float] = field(default_factory=list)
    added_p99: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def rss_sampler(self) -> Callable[[], None]:
        """Something cheap to call during a run, keeping the highest RSS seen."""
        pids = tree_pids(self.pid)

        def sample() -> None:
            self.rss_load_kib = max(self.rss_load_kib, rss_kib(self.pid, pids))

        return sample


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if v is None else format(v, spec) + suffix


def _signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f} ms"


def table(targets: list[Target]) -> str:
    head = (
        "| target | req/s @50 | p99 @50 | MiB/s 1MiB | p50 @1 | p99 @1 | added p50 | "
        "added p99 | CPU us/req | RSS idle | RSS load |"
    )
    rows = [head, "|" + "---|" * 11]
    for t in targets:
        if t.failed and not t.rps:
            rows.append(f"| {t.name} | failed: {t.failed.splitlines()[0][:80]} |" + " |" * 9)
            continue
        added = t.name != DIRECT
        rows.append(
            "| "
            + " | ".join(
                [
                    t.name,
                    _fmt(med(t.rps), ",.0f"),
                    _fmt(med(t.p99_50), ".2f", " ms"),
                    _fmt(med(t.mbs), ",.0f"),
                    _fmt(med(t.p50_1), ".3f", " ms"),
                    _fmt(med(t.p99_1), ".3f", " ms"),
                    _signed(med(t.added_p50)) if added else "-",
                    _signed(med(t.added_p99)) if added else "-",
                    _fmt(med(t.cpu_us), ".1f"),
                    _fmt(t.rss_idle_kib / 1024 if t.rss_idle_kib else None, ".1f", " MiB"),
                    _fmt(t.rss_load_kib / 1024 if t.rss_load_kib else None, ".1f", " MiB"),
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(targets: dict[str, Target]) -> str:
    ng = targets.get(NGINX)
    if ng is None or not ng.rps:
        return "(no nginx figures to compare with)"
    rows = [
        "| target | req/s vs nginx | MiB/s vs nginx | CPU/req vs nginx | RSS load vs nginx |",
        "|---|---|---|---|---|",
    ]
    for t in targets.values():
        if t.name == NGINX or not t.rps:
            continue
        rss = _ratio(float(t.rss_load_kib), float(ng.rss_load_kib))
        rows.append(
            f"| {t.name} | {_fmt(_ratio(med(t.rps), med(ng.rps)), '.2f', 'x')} "
            f"| {_fmt(_ratio(med(t.mbs), med(ng.mbs)), '.2f', 'x')} "
            f"| {_fmt(_ratio(med(t.cpu_us), med(ng.cpu_us)), '.1f', 'x')} "
            f"| {_fmt(rss, '.1f', 'x')} |"
        )
    return "\n".join(rows)


@dataclass
class Check:
    target: str
    what: str
    measured: str
    limit: str
    ok: bool | None  # None: could not be judged


def checks(targets: dict[str, Target], tokens_during_load: int) -> list[Check]:
    out: list[Check] = []
    ng = targets.get(NGINX)
    ng_rps = med(ng.rps) if ng else None
    ng_mbs = med(ng.mbs) if ng else None
    ng_cpu = med(ng.cpu_us) if ng else None

    def add(t: str, what: str, value: float | None, limit: float | None, fmt: str, le: bool):
        if value is None or limit is None:
            out.append(Check(t, what, "n/a", "n/a", None))
            return
        ok = value <= limit if le else value >= limit
        op = "<=" if le else ">="
        out.append(Check(t, what, format(value, fmt), f"{op} {format(limit, fmt)}", ok))

    for name in AUTHPROXY_TARGETS:
        t = targets.get(name)
        if t is None:
            continue
        if not t.rps:
            out.append(Check(name, "measured at all", "no", "yes", False))
            continue
        add(name, "req/s @50", med(t.rps), ng_rps and ng_rps * MIN_RPS_VS_NGINX, ",.0f", False)
        add(name, "CPU us/req", med(t.cpu_us), MAX_CPU_US, ".1f", True)
        cpu_limit = ng_cpu and ng_cpu * MAX_CPU_VS_NGINX
        add(name, "CPU us/req, scaled (6x nginx)", med(t.cpu_us), cpu_limit, ".1f", True)
        add(name, "added p50 @1 (ms)", med(t.added_p50), MAX_ADDED_P50_MS, ".3f", True)
        add(name, "added p99 @1 (ms)", med(t.added_p99), MAX_ADDED_P99_MS, ".3f", True)
        add(name, "MiB/s 1MiB", med(t.mbs), ng_mbs and ng_mbs * MIN_MBS_VS_NGINX, ",.0f", False)
    st = targets.get(STATIC)
    if st and st.rps:
        add("authproxy", "RSS idle (MiB)", st.rss_idle_kib / 1024, MAX_RSS_IDLE_MIB, ".1f", True)
        load = max(t.rss_load_kib for n, t in targets.items() if n in AUTHPROXY_TARGETS) / 1024
        add("authproxy", "RSS load (MiB)", load, MAX_RSS_LOAD_MIB, ".1f", True)
    tk = targets.get(TOKEN)
    if st and tk and st.rps and tk.rps:
        for label, a, b in (("p99 @1", tk.p99_1, st.p99_1), ("p99 @50", tk.p99_50, st.p99_50)):
            limit = med(b)
            limit = limit * TOKEN_P99_TOLERANCE + TOKEN_P99_SLACK_MS if limit is not None else None
            add(TOKEN, f"{label} (ms) vs static", med(a), limit, ".3f", True)
        if tokens_during_load < 2:
            out.append(
                Check(TOKEN, "tokens refreshed under load", str(tokens_during_load), ">= 2", None)
            )
    return out


def checks_table(cs: list[Check]) -> str:
    rows = ["| target | check | measured | target | result |", "|---|---|---|---|---|"]
    for c in cs:
        res = "n/a" if c.ok is None else ("PASS" if c.ok else "FAIL")
        rows.append(f"| {c.target} | {c.what} | {c.measured} | {c.limit} | {res} |")
    return "\n".join(rows)


def tool_version(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (res.stdout + res.stderr).strip().splitlines()[0] if (res.stdout + res.stderr) else "?"


def environment() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import aiohttp

        aio = aiohttp.__version__
    except ImportError:
        aio = "absent"
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "absent"
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}; "
        f"{tool_version(['nginx', '-v'])}; {tool_version(['wrk', '-v'])}; "
        f"Python {platform.python_version()}, aiohttp {aio}, uvloop {uv}"
    )
