"""``authproxy serve --workers N``: N serving processes on one port, one token.

One authproxy process uses one core. On a host with more, the supervisor here
starts N workers, each a whole ``authproxy serve`` bound to the same port with
``SO_REUSEPORT``: the kernel spreads new connections over them. The supervisor
itself serves nothing; it starts the workers, passes signals on, restarts one
that dies, and cleans up.

What the workers share, so that N of them behave as one proxy:

- **Tokens.** With the default memory store, each worker would log in on its
  own: N logins, and with providers whose refresh invalidates the previous token
  (rotating refresh tokens), workers knocking each other's tokens out. So the
  workers get a private file store (in ``/dev/shm`` where it exists: memory,
  never disk; removed at exit), whose per-key lock makes one worker fetch while
  the others wait and read its token. A configured ``file`` or ``redis`` store is
  used as it is.
- **Metrics.** prometheus-client's multiprocess mode: every worker writes to
  files in a private directory; worker 0 serves the admin port, and its
  ``/metrics`` adds up all workers' values (counters and histograms summed,
  in-flight gauges summed, token expiry the latest). Counters stay monotonic
  when a worker is restarted.
- **The admin port** is worker 0's: ``/healthz`` and ``/readyz`` describe it
  (the token state is shared anyway); if it dies, the supervisor restarts it.

Signals: SIGTERM/SIGINT drain every worker (a second one stops them at once, as
for a single process: the supervisor sends them SIGUSR1, since a worker may get
the first SIGTERM twice, from systemd and from the supervisor); SIGHUP reloads
every worker. A worker that exits within
its first seconds stops the whole set (a bad port, a bad store: restarting
would fail the same way); a worker that dies later is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import FrameType

from proxy import config as configmod
from proxy import sd_notify
from proxy.exit_codes import EXIT_CONFIG, EXIT_FAIL, EXIT_OK
from proxy.telemetry.logs import startup_error

log = logging.getLogger("authproxy.workers")

#: environment of a worker: its number, and the shared file store (when made here)
ENV_INDEX = "AUTHPROXY_WORKER"
ENV_STORE = "AUTHPROXY_WORKER_STORE"
ENV_SUPERVISOR = "AUTHPROXY_SUPERVISOR_PID"
#: a worker that exits sooner than this after its start failed to start
START_GRACE = 3.0
#: restarts of one worker are at least this far apart
_RESTART_DELAY = 1.0


def problem(config: configmod.Config, workers: int) -> str | None:
    """Why ``config`` cannot run with ``workers`` processes, or None."""
    if workers < 1:
        return "--workers must be 1 or more"
    if config.listen.path is not None:
        return "--workers needs a TCP listen address (SO_REUSEPORT does not apply to unix sockets)"
    if config.listen.port == 0:
        return "--workers needs a fixed listen port, not 0 (every worker binds the same one)"
    if not hasattr(socket, "SO_REUSEPORT"):
        return "--workers needs SO_REUSEPORT, which this platform lacks"
    return None


def needs_shared_store(config: configmod.Config) -> bool:
    return config.token_store.type == "memory" and any(
        r.auth.type not in ("none", "static") for r in config.routes
    )


def worker_config(config: configmod.Config, index: int) -> configmod.Config:
    """The config as worker ``index`` runs it: the shared store, admin on worker 0."""
    store = os.environ.get(ENV_STORE)
    if store:
        config = replace(config, token_store=configmod.TokenStoreConfig(type="file", path=store))
    if index > 0:
        config = replace(config, admin_listen=None)
    return config


#: a stop signal arrived before the worker's event loop took the signals over
_early_stop: list[int] = []
#: SIGUSR1 ("stop now") arrived before the worker's event loop took it over
_early_now: list[int] = []


def stop_requested() -> bool:
    """Whether SIGTERM/SIGINT (or SIGUSR1) came while the worker was still starting."""
    return bool(_early_stop or _early_now)


def become_worker(index: int) -> None:
    """In a worker process, at start: die with the supervisor, tag every log line,
    and keep a stop signal that comes before serving starts (not die of it).

    SIGUSR1 is caught from here on too. Its default action kills the process, and
    the loop takes it over only once the drain has begun: a second stop that the
    supervisor passes on right after the first would otherwise kill the worker
    (no "stopped", no clean close) or, caught too late, be lost."""
    from proxy.telemetry import logs as logs

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: _early_stop.append(signum))
    signal.signal(signal.SIGUSR1, lambda signum, frame: _early_now.append(signum))
    logs.WORKER = index
    parent = int(os.environ.get(ENV_SUPERVISOR, "0"))
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the supervisor dies
    except (OSError, AttributeError):
        pass
    if parent and os.getppid() != parent:
        raise SystemExit(EXIT_FAIL)  # the supervisor died before prctl took effect


def cut_on_sigusr1(loop: asyncio.AbstractEventLoop, now: Callable[[], None]) -> None:
    """In a worker whose drain has begun: SIGUSR1 (the supervisor's second stop)
    cuts what is in flight, also one that came before this; SIGTERM/SIGINT again do
    nothing (systemd signals the whole cgroup, and the supervisor passes the same
    stop on: one stop may reach a worker twice)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: None)
    loop.add_signal_handler(signal.SIGUSR1, now)
    if _early_now:
        now()


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    #: its exit was seen and its live metrics dropped
    reaped: bool = False


class Supervisor:
    """Starts and watches the workers; see the module's text."""

    def __init__(self, config: configmod.Config, argv: Sequence[str], workers: int) -> None:
        self.config = config
        self.argv = list(argv)
        self.count = workers
        self.workers: list[_Worker] = []
        self.signals = 0
        self._reload = False
        self._dir = tempfile.mkdtemp(prefix="authproxy-workers-", dir=_private_tmp())
        self.env = dict(os.environ)
        metrics_dir = os.path.join(self._dir, "metrics")
        os.mkdir(metrics_dir, 0o700)
        self.env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        self.env[ENV_SUPERVISOR] = str(os.getpid())
        self.env.pop(ENV_STORE, None)
        if needs_shared_store(config):
            self.env[ENV_STORE] = os.path.join(self._dir, "tokens.json")
        #: under systemd, the workers' $NOTIFY_SOCKET: READY=1 once all of them say it
        self.relay = sd_notify.Relay.for_workers(self.env, self._dir)

    def _spawn(self, index: int) -> _Worker:
        env = {**self.env, ENV_INDEX: str(index)}
        # Its own process group: a Ctrl-C in a terminal reaches the supervisor only,
        # which passes it on once (twice would mean "stop at once" to a worker).
        proc = subprocess.Popen(self.argv, env=env, process_group=0)
        log.info("worker started", extra={"worker_index": index, "pid": proc.pid})
        return _Worker(index, proc)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
            return
        self.signals += 1

    def _send(self, sig: int) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                try:
                    w.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        shared = self.env.get(ENV_STORE)
        log.info(
            "starting %d workers on %s",
            self.count,
            self.config.listen,
            extra={"shared_token_store": "private file store" if shared else "as configured"},
        )
        try:
            self.workers = [self._spawn(i) for i in range(self.count)]
            return self._watch()
        finally:
            self._send(signal.SIGKILL)
            for w in self.workers:
                w.proc.wait()
            if self.relay is not None:
                self.relay.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    def _watch(self) -> int:
        sent = 0
        failed = 0
        while True:
            # One signal at a time: two that came within one poll are a drain and
            # then a cut, and one that comes while this passes the last one on is
            # counted, not absorbed.
            while self.signals > sent:
                sent += 1
                if sent == 1:
                    log.info("stopping the workers")
                    sd_notify.notify("STOPPING=1")
                    self._send(signal.SIGTERM)
                else:
                    log.warning("second signal: stopping the workers now")
                    self._send(signal.SIGUSR1)
            if self._reload:
                self._reload = False
                self._send(signal.SIGHUP)
            alive = 0
            for i, w in enumerate(self.workers):
                code = w.proc.poll()
                if code is None:
                    alive += 1
                    continue
                if not w.reaped:
                    w.reaped = True
                    _mark_dead(w.proc.pid, self.env["PROMETHEUS_MULTIPROC_DIR"])
                if sent:
                    # Killed by the SIGTERM we sent: it was still starting (before
                    # become_worker took the signal over), so it had nothing to finish.
                    failed = failed or (0 if code == -signal.SIGTERM else code)
                    continue
                if time.monotonic() - w.started < START_GRACE:
                    log.error(
                        "worker %d exited with code %d at start; stopping all workers",
                        w.index,
                        code,
                    )
                    self.signals += 1
                    failed = code or EXIT_FAIL
                    continue
                log.warning(
                    "worker %d (pid %d) exited with code %d; starting it again",
                    w.index,
                    w.proc.pid,
                    code,
                )
                time.sleep(_RESTART_DELAY)
                self.workers[i] = self._spawn(w.index)
                alive += 1
            if self.relay is not None and not sent:
                self.relay.all_ready(w.proc.pid for w in self.workers)
            if sent and alive == 0:
                log.info("all workers stopped")
                return EXIT_FAIL if failed else EXIT_OK
            time.sleep(0.1)


def _mark_dead(pid: int, path: str) -> None:
    from prometheus_client import multiprocess

    try:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    except OSError:
        pass


def _private_tmp() -> str | None:
    """``/dev/shm`` (memory) where it is usable, else the usual temporary directory."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def supervise(config: configmod.Config, argv: Sequence[str], workers: int) -> int:
    """Run ``argv`` (a ``serve`` command line) as ``workers`` processes."""
    reason = problem(config, workers)
    if reason is not None:
        startup_error(reason)
        return EXIT_CONFIG
    return Supervisor(config, argv, workers).run()


__all__ = ["become_worker", "cut_on_sigusr1", "stop_requested", "supervise", "worker_config"]
