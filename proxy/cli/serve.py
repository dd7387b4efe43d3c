"""``authproxy serve``: run the proxy until SIGTERM or SIGINT.

One process, or with ``--workers N`` a supervisor of N (:mod:`proxy.ops.workers`),
each worker being this same command. The first stop signal drains in-flight
requests for ``shutdown_grace``; a second one cuts them. SIGHUP, and a change
to the config file, reload. Under systemd, ``READY=1`` follows the bind and
``STOPPING=1`` the stop signal (:mod:`proxy.sd_notify`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from proxy import config as configmod
from proxy import sd_notify
from proxy.app import Proxy, create_app
from proxy.cli.common import config_path, load, run
from proxy.exit_codes import EXIT_CONFIG, EXIT_FAIL, EXIT_OK
from proxy.ops import workers
from proxy.ops.reload import Reloader
from proxy.telemetry import logs as logs
from proxy.tokens.stores.base import StoreError

log = logging.getLogger("authproxy")
_STOPS = (signal.SIGTERM, signal.SIGINT)


def command(args: argparse.Namespace) -> int:
    logs.setup(args.log_format, args.log_level)
    path = config_path(args.config)
    config = load(path)
    if config is None:
        return EXIT_CONFIG
    index = os.environ.get(workers.ENV_INDEX)
    if index is not None:  # started by the supervisor of `serve --workers`
        workers.become_worker(int(index))
        return run(serve(workers.worker_config(config, int(index)), path, worker=int(index)))
    if args.workers != 1:
        argv = [sys.executable, "-m", "proxy", "serve", "-c", os.path.abspath(path)]
        argv += ["--log-format", args.log_format, "--log-level", args.log_level]
        return workers.supervise(config, argv, args.workers)
    return run(serve(config, path))


async def serve(config: configmod.Config, path: str, worker: int | None = None) -> int:
    """Serve ``config`` until a stop signal; the exit status."""
    proxy = await _start(config, worker)
    if proxy is None:
        return EXIT_FAIL
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOPS:
        loop.add_signal_handler(sig, stop.set)
    if worker is not None and workers.stop_requested():
        stop.set()
    reloader = _reloader(proxy, path, worker)
    loop.add_signal_handler(signal.SIGHUP, reloader.trigger)
    reloader.start()
    # Only now: a stop asked for right after READY=1 must find its handler.
    sd_notify.notify("READY=1")
    await stop.wait()
    sd_notify.notify("STOPPING=1")
    log.info(
        "shutting down: finishing in-flight requests (a second signal stops at once)",
        extra={"grace_s": config.shutdown_grace},
    )
    reloader.stop()
    return await _drain(proxy, worker)


async def _start(config: configmod.Config, worker: int | None) -> Proxy | None:
    """The proxy, its listeners bound; None once the reason it cannot is printed."""
    try:
        proxy = create_app(config, reuse_port=worker is not None)
    except StoreError as exc:
        logs.startup_error(f"token store: {exc}")
        return None
    try:
        await proxy.start()
    except OSError as exc:
        logs.startup_error(f"cannot listen: {exc.strerror or exc}")
        await proxy.stop()
        return None
    except BaseException:
        await proxy.stop()
        raise
    return proxy


def _reloader(proxy: Proxy, path: str, worker: int | None) -> Reloader:
    if worker is None:
        return Reloader(proxy, path)
    index = worker

    def adjust(c: configmod.Config) -> configmod.Config:
        return workers.worker_config(c, index)

    return Reloader(proxy, path, adjust=adjust)


async def _drain(proxy: Proxy, worker: int | None) -> int:
    """Stop gracefully; a second signal cuts what is still in flight."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.ensure_future(proxy.stop())

    def now() -> None:
        if not stopping.done():
            log.warning("second signal: stopping now; requests still in flight are cut")
            stopping.cancel()

    if worker is None:
        for sig in _STOPS:
            loop.add_signal_handler(sig, now)
    else:  # only SIGUSR1, the supervisor's second stop, means "now" to a worker
        workers.cut_on_sigusr1(loop, now)
    try:
        await stopping
    except asyncio.CancelledError:
        if not stopping.cancelled():
            raise  # this task itself was cancelled, not the shutdown
        await proxy.stop(now=True)
        log.info("stopped")
        return EXIT_FAIL
    log.info("stopped")
    return EXIT_OK
