#!/usr/bin/env python3
"""Benchmark authproxy against a direct connection and nginx, on loopback.

Starts, in a temporary directory that is removed at the end:

* an upstream nginx serving ``/small`` (a fixed 1 KiB body), ``/big`` (a 1 MiB
  file) and ``/auth`` (echoes the Authorization header it received);
* nginx as a header-injecting reverse proxy (``proxy_pass`` + ``proxy_set_header
  Authorization "Bearer x"`` + a keep-alive upstream pool), one worker process
  to be fair with a one-process authproxy;
* a token server (``bench/token_server.py``) issuing tokens that expire in 3 s;
* authproxy (``python -m proxy serve``) with a ``static`` route and a ``token``
  route (``login`` auth, ``refresh_before: 1s``: it refreshes about every 2 s).

Then runs wrk against each target in interleaved rounds (50 connections on the
1 KiB body, 1 connection on the 1 KiB body, a few connections on the 1 MiB
body), reports the median per target as a markdown table, the ratios against
nginx, and a pass/fail line per target from the performance issue.

Every process it starts is stopped on exit, on error and on Ctrl-C; the whole run
is capped by ``--max-time``.  Exit status: 0 when every target was measured,
1 when one could not be (e.g. authproxy did not start), 2 for a usage error or a
missing tool, 3 with ``--strict`` when a performance target is missed.

Usage: python bench/run.py [--duration S] [--rounds N] [--connections 50] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import (
    BenchError,
    Processes,
    alive,
    cpu_seconds,
    find_tool,
    free_port,
    http_get,
    machine_cpu,
    own_cpu,
    rss_kib,
)
from bench.report import (
    ALL_TARGETS,
    AUTHPROXY_TARGETS,
    DEFAULT_TARGETS,
    DIRECT,
    NGINX,
    STATIC,
    TOKEN,
    WORKERS,
    Target,
    checks,
    checks_table,
    environment,
    ratios,
    table,
)
from bench.servers import (
    BIG_SIZE,
    REPO,
    SMALL_SIZE,
    serve_command,
    start_authproxy,
    start_nginx,
    start_token_server,
    token_stats,
    write_proxy_conf,
    write_upstream_conf,
)
from bench.wrk import WrkResult, run_wrk

TOKEN_TTL = 3
FOREIGN_LOAD_WARN = 10.0  # percent of the machine used by processes not ours
MIB = 1 << 20


class Interrupted(Exception):
    """SIGTERM received."""


def sanity_check(t: Target) -> None:
    """The target answers the right bodies and the upstream sees the expected token."""
    for path, size in (("small", SMALL_SIZE), ("big", BIG_SIZE)):
        status, body = http_get(t.base + path)
        if status != 200 or len(body) != size:
            raise BenchError(f"GET {t.base}{path}: status {status}, {len(body)} bytes, want {size}")
    status, body = http_get(t.base + "auth")
    seen = body.decode(errors="replace")
    if status != 200 or not seen.startswith(t.expect_auth):
        raise BenchError(
            f"GET {t.base}auth: status {status}, upstream saw Authorization {seen!r}, "
            f"want {t.expect_auth!r}..."
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark authproxy against direct and nginx with wrk (loopback).",
    )
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    p.add_argument("--connections", type=int, default=50, help="connections of the load runs")
    p.add_argument("--big-connections", type=int, default=10, help="connections of the 1 MiB runs")
    p.add_argument("--quick", action="store_true", help="1 round of 1 s runs, no warm-up")
    p.add_argument(
        "--max-time", type=float, default=170, help="stop starting rounds after this (s)"
    )
    p.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated subset of {','.join(DEFAULT_TARGETS)}",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help=f"also measure `serve --workers N` on the static route (target {WORKERS})",
    )
    p.add_argument(
        "--authproxy-cmd",
        help="command that serves authproxy, given -c CONFIG after it "
        "(default: this Python's `-m proxy serve`; e.g. 'authproxy serve')",
    )
    p.add_argument("--json", type=Path, help="also write the raw figures here")
    p.add_argument("--output", type=Path, help="also write the markdown report here")
    p.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 1 if args.quick else 2
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    args.warmup = 0 if args.quick else 1
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_TARGETS]
    if unknown or not names:
        p.error(f"unknown targets {unknown}; choose from {', '.join(ALL_TARGETS)}")
    if args.workers > 1 and WORKERS not in names:
        names.append(WORKERS)
    if WORKERS in names and args.workers < 2:
        p.error(f"target {WORKERS} needs --workers N with N >= 2")
    args.targets = [n for n in ALL_TARGETS if n in names]
    if args.duration < 1 or args.rounds < 1 or args.connections < 1:
        p.error("--duration, --rounds and --connections must be >= 1 (wrk takes whole seconds)")
    return args


def _plan(args: argparse.Namespace) -> Iterator[tuple[str, int, str]]:
    """The three runs of a round: (kind, connections, path)."""
    yield "load", args.connections, "small"
    yield "latency", 1, "small"
    yield "big", args.big_connections, "big"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in ("nginx", "wrk") if find_tool(tool) is None]
    if missing:
        print(
            f"bench: {' and '.join(missing)} not found on PATH; install them with "
            f"`apt-get install {' '.join(missing)}` (Debian packages).",
            file=sys.stderr,
        )
        return 2

    def on_term(signum: int, _frame: object) -> None:
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    started_at = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="authproxy-bench-"))
    procs = Processes(tmp, cwd=REPO)
    try:
        return _run(args, tmp, procs, started_at)
    except (KeyboardInterrupt, Interrupted):
        print("\nbench: interrupted; stopping every process it started", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        # Cleanup is bounded (a few seconds): let a second Ctrl-C not cut it short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def start_targets(
    args: argparse.Namespace, tmp: Path, procs: Processes
) -> tuple[dict[str, Target], int]:
    """Start the servers; the targets (a failed one says why) and the token server's port."""
    up_port = free_port()
    up_dir = tmp / "upstream"
    up_dir.mkdir()
    up_pid = start_nginx(procs, "upstream", up_dir, write_upstream_conf(up_dir, up_port), up_port)
    targets: dict[str, Target] = {}
    if DIRECT in args.targets:
        targets[DIRECT] = Target(DIRECT, f"http://127.0.0.1:{up_port}/", up_pid, "")
    if NGINX in args.targets:
        ng_port = free_port()
        ng_dir = tmp / "nginx-proxy"
        ng_dir.mkdir()
        conf = write_proxy_conf(ng_dir, ng_port, up_port)
        try:
            pid = start_nginx(procs, "nginx-proxy", ng_dir, conf, ng_port)
            targets[NGINX] = Target(NGINX, f"http://127.0.0.1:{ng_port}/", pid, "Bearer x")
        except BenchError as exc:
            targets[NGINX] = Target(NGINX, "", 0, "", failed=str(exc))

    token_port = 0
    wanted = [n for n in AUTHPROXY_TARGETS if n in args.targets]
    if wanted:
        token_port = start_token_server(procs, TOKEN_TTL)
        try:
            cmd = serve_command(args.authproxy_cmd)
            port, pid = start_authproxy(procs, tmp, cmd, up_port, token_port)
        except BenchError as exc:
            print(f"\nauthproxy could not be started: {exc}\n")
            for name in wanted:
                targets[name] = Target(name, "", 0, "", failed=str(exc))
        else:
            routes = {STATIC: ("static", "Bearer x"), TOKEN: ("token", "Bearer tok-")}
            for name in wanted:
                route, auth = routes[name]
                targets[name] = Target(name, f"http://127.0.0.1:{port}/{route}/", pid, auth)

    if WORKERS in args.targets:
        if not token_port:
            token_port = start_token_server(procs, TOKEN_TTL)
        try:
            cmd = serve_command(args.authproxy_cmd)
            extra = ("--workers", str(args.workers))
            port, pid = start_authproxy(
                procs, tmp, cmd, up_port, token_port, name="authproxy-workers", extra=extra
            )
            base = f"http://127.0.0.1:{port}/static/"
            targets[WORKERS] = Target(WORKERS, base, pid, "Bearer x")
        except BenchError as exc:
            targets[WORKERS] = Target(WORKERS, "", 0, "", failed=str(exc))

    time.sleep(0.5 if WORKERS in targets else 0.2)
    for t in targets.values():
        if t.failed:
            continue
        t.rss_idle_kib = rss_kib(t.pid)  # started, before any request
        try:
            sanity_check(t)
        except (BenchError, OSError) as exc:
            t.failed = f"sanity check: {exc}"
            print(f"{t.name}: {t.failed}")
    return targets, token_port


def one_run(t: Target, conns: int, path: str, duration: int) -> tuple[WrkResult, float] | None:
    """One wrk run against ``t``; its result and the target's CPU us per request."""
    if not alive(t.pid):
        t.failed = t.failed or "its process exited during the bench"
        return None
    cpu0 = cpu_seconds(t.pid)
    # No RSS sampling at 1 connection: the peak comes under load, and sampling would
    # add its own CPU time to the latency measured.
    res, raw = run_wrk(t.base + path, conns, duration, t.rss_sampler() if conns > 1 else None)
    cpu = cpu_seconds(t.pid) - cpu0
    if not alive(t.pid):
        t.failed = "its process exited during the bench"
        return None
    if res.non2xx or res.socket_errors:
        t.warnings.append(
            f"{path} @{conns}: {res.non2xx} non-2xx answers, {res.socket_errors} socket errors "
            f"in {res.requests} requests"
        )
    if res.requests == 0:
        t.failed = f"no request completed: {raw.strip()[-300:]}"
        return None
    return res, cpu / res.requests * 1e6


def measure(
    args: argparse.Namespace, targets: dict[str, Target], rounds: int, deadline: float
) -> int:
    """Interleaved rounds; the number of rounds done before ``deadline``."""
    live = [t for t in targets.values() if not t.failed]
    if args.warmup:
        for t in live:
            run_wrk(t.base + "small", args.connections, args.warmup, t.rss_sampler())
    per_round = len(live) * 3 * (args.duration + 0.4)
    done = 0
    for r in range(rounds):
        if time.monotonic() + per_round > deadline:
            print(f"note: time cap reached; stopping after {done} round(s)")
            break
        order = live[r % len(live) :] + live[: r % len(live)] if live else []
        for kind, conns, path in _plan(args):
            results: dict[str, WrkResult] = {}
            for t in order:
                got = None if t.failed else one_run(t, conns, path, args.duration)
                if got is None:
                    continue
                res, cpu_us = got
                results[t.name] = res
                if kind == "load":
                    t.rps.append(res.rps)
                    t.p99_50.append(res.p99_ms)
                    t.cpu_us.append(cpu_us)
                elif kind == "latency":
                    t.p50_1.append(res.p50_ms)
                    t.p99_1.append(res.p99_ms)
                else:
                    t.mbs.append(res.bytes_per_s / MIB)
            direct = results.get(DIRECT)
            if kind == "latency" and direct:
                for name, res in results.items():
                    if name != DIRECT:
                        targets[name].added_p50.append(res.p50_ms - direct.p50_ms)
                        targets[name].added_p99.append(res.p99_ms - direct.p99_ms)
        done += 1
        print(f"round {r + 1}/{rounds} done", flush=True)
    return done


def _run(args: argparse.Namespace, tmp: Path, procs: Processes, started_at: float) -> int:
    per_round = len(args.targets) * 3 * (args.duration + 0.4)
    budget = args.max_time - 15 - len(args.targets) * args.warmup * 1.2
    rounds = args.rounds
    if rounds * per_round > budget:
        rounds = max(1, int(budget // per_round))
        print(f"note: {args.rounds} rounds would pass --max-time {args.max_time:.0f}s; {rounds}")
    print("# authproxy bench")
    print(f"environment: {environment()}")
    print(
        f"plan: {rounds} interleaved round(s) x {len(args.targets)} targets x 3 wrk runs of "
        f"{args.duration}s (wrk -t1; 1 KiB @{args.connections} conns, 1 KiB @1 conn, "
        f"1 MiB @{args.big_connections} conns); the nginx proxy and the upstream run "
        "worker_processes 1, to match a one-process authproxy",
        flush=True,
    )
    targets, token_port = start_targets(args, tmp, procs)
    tokens_before = token_stats(token_port) if token_port else -1
    roots = [p.pid for _name, p in procs.started]
    load_started = time.monotonic()
    busy0, irq0, steal0 = machine_cpu()
    own0 = own_cpu(roots)
    done = measure(args, targets, rounds, started_at + args.max_time)
    busy1, irq1, steal1 = machine_cpu()
    own1 = own_cpu(roots)
    load_seconds = time.monotonic() - load_started
    capacity = load_seconds * (os.cpu_count() or 1)
    foreign = max(0.0, (busy1 - busy0) - (own1 - own0)) / capacity * 100
    steal = (steal1 - steal0) / capacity * 100
    irq = (irq1 - irq0) / capacity * 100
    tokens_during = token_stats(token_port) - tokens_before if token_port else -1

    report = [
        "",
        f"## Results: median of {done} interleaved round(s), {args.duration}s per wrk run",
        "",
        table(list(targets.values())),
        "",
        "direct = wrk straight to the upstream nginx; its CPU and RSS are the upstream's. "
        "Other rows count only the proxy's process tree (nginx: master + 1 worker). "
        "added = p @1 connection minus direct's in the same round. "
        "MiB/s as wrk reports it (body + headers).",
    ]
    if token_port:
        report.append(
            f"token route: {tokens_during} token(s) issued during {load_seconds:.0f}s of load "
            f"(expires_in {TOKEN_TTL}s, refresh_before 1s)."
        )
    report.append(
        f"other load: processes not started by the bench used {foreign:.0f}% of the "
        f"machine's {os.cpu_count()} CPUs during the measurement; interrupts (mostly the "
        f"bench's own loopback traffic) {irq:.0f}%; stolen by the hypervisor {steal:.0f}%."
    )
    if foreign > FOREIGN_LOAD_WARN:
        report.append(
            "warning: the machine was busy with other work: the absolute figures are low and "
            "noisy; rerun on an idle machine (the ratios, from interleaved rounds, suffer less)."
        )
    report += ["", "### Ratios vs nginx", "", ratios(targets), ""]
    cs = checks(targets, tokens_during)
    if cs:
        report += ["### Targets", "", checks_table(cs), ""]
    for t in targets.values():
        report += [f"warning: {t.name}: {w}" for w in t.warnings]
        if t.failed:
            report.append(f"failed: {t.name}: {t.failed}")
    report.append(f"total time: {time.monotonic() - started_at:.0f}s")
    text = "\n".join(report)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    if args.json:
        figures = {n: {k: v for k, v in vars(t).items() if k != "pid"} for n, t in targets.items()}
        args.json.write_text(
            json.dumps(
                {
                    "rounds": done,
                    "duration": args.duration,
                    "connections": args.connections,
                    "tokens_during_load": tokens_during,
                    "foreign_load_percent": foreign,
                    "steal_percent": steal,
                    "interrupt_percent": irq,
                    "targets": figures,
                    "checks": [vars(c) for c in cs],
                },
                indent=2,
            )
        )
    if any(t.failed or not t.rps for t in targets.values()):
        return 1
    if args.strict and any(c.ok is False for c in cs):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
