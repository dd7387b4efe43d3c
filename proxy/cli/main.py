"""The ``authproxy`` command: serve, check, token, authorize, demo. Wiring only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from proxy import __version__
from proxy import config as configmod
from proxy.telemetry import logs as logs

log = logging.getLogger("authproxy")

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: int = uvloop.run(coro)
    return result


def _load(path: str | None) -> configmod.Config | None:
    path = path or configmod.default_path()
    try:
        return configmod.load(path)
    except configmod.ConfigError as exc:
        details = [problem.format(exc.source) for problem in exc.problems]
        logs.startup_error(f"invalid configuration ({len(details)} problem(s))", details)
        return None


# -- serve ----------------------------------------------------------------------------


async def _serve(config: configmod.Config, config_path: str, worker: int | None = None) -> int:
    from proxy.app import create_app
    from proxy.tokens.stores.base import StoreError

    try:
        proxy = create_app(config, reuse_port=worker is not None)
    except StoreError as exc:
        logs.startup_error(f"token store: {exc}")
        return EXIT_FAIL
    try:
        await proxy.start()
    except OSError as exc:
        logs.startup_error(f"cannot listen: {exc.strerror or exc}")
        await proxy.stop()
        return EXIT_FAIL
    except BaseException:
        await proxy.stop()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if worker is not None:
        from proxy.ops.workers import stop_requested

        if stop_requested():
            stop.set()
    reloader = None
    try:
        from proxy.ops.reload import Reloader
    except ImportError:
        pass
    else:
        adjust = None
        if worker is not None:
            from proxy.ops.workers import worker_config

            def adjust(c: configmod.Config) -> configmod.Config:
                return worker_config(c, worker)

        reloader = Reloader(proxy, config_path, adjust=adjust)
        loop.add_signal_handler(signal.SIGHUP, reloader.trigger)
        reloader.start()
    await stop.wait()
    log.info(
        "shutting down: finishing in-flight requests (a second signal stops at once)",
        extra={"grace_s": config.shutdown_grace},
    )
    if reloader is not None:
        reloader.stop()
    stopping = asyncio.ensure_future(proxy.stop())

    def now() -> None:
        if not stopping.done():
            log.warning("second signal: stopping now; requests still in flight are cut")
            stopping.cancel()

    if worker is None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, now)
    else:  # only SIGUSR1, the supervisor's second stop, means "now" to a worker
        from proxy.ops.workers import cut_on_sigusr1

        cut_on_sigusr1(loop, now)
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


def cmd_serve(args: argparse.Namespace) -> int:
    logs.setup(args.log_format, args.log_level)
    path = args.config or configmod.default_path()
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    index = os.environ.get("AUTHPROXY_WORKER")
    if index is not None:  # started by the supervisor of `serve --workers`
        from proxy.ops.workers import become_worker, worker_config

        become_worker(int(index))
        return run(_serve(worker_config(config, int(index)), path, worker=int(index)))
    if args.workers != 1:
        from proxy.ops.workers import supervise

        argv = [sys.executable, "-m", "proxy", "serve", "-c", os.path.abspath(path)]
        argv += ["--log-format", args.log_format, "--log-level", args.log_level]
        return supervise(config, argv, args.workers)
    return run(_serve(config, path))


# -- check ----------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if args.explain:
        from proxy.config.explain import explain

        print(explain(config))
    else:
        names = ", ".join(r.name for r in config.routes)
        print(f"config OK: {len(config.routes)} route(s): {names}")
    if args.connect:
        from proxy.tokens.stores.check import connect_main

        return run(connect_main(config))
    return EXIT_OK


# -- token ----------------------------------------------------------------------------


async def _token(config: configmod.Config, route_name: str, show: bool) -> int:
    import time

    from proxy.clock import SystemClock
    from proxy.errors import ProxyError
    from proxy.proxying.runtime import RouteRuntime
    from proxy.telemetry.metrics import Metrics
    from proxy.tokens.stores.base import StoreError, open_store

    try:
        route = config.route(route_name)
    except KeyError:
        known = ", ".join(r.name for r in config.routes)
        print(f"authproxy: no route {route_name!r}; routes: {known}", file=sys.stderr)
        return EXIT_CONFIG
    metrics = Metrics()
    try:
        store = open_store(config.token_store, metrics=metrics)
    except StoreError as exc:
        print(f"authproxy: token store: {exc}", file=sys.stderr)
        return EXIT_FAIL
    rt = RouteRuntime(route, clock=SystemClock(), metrics=metrics, store=store)
    try:
        if rt.manager is None:
            print(f"route {route_name} uses auth type {route.auth.type}: no token to obtain")
            return EXIT_OK
        try:
            tok = await rt.manager.prime()
        except ProxyError as exc:
            print(f"authproxy: {exc.code}: {exc.message}", file=sys.stderr)
            return EXIT_FAIL
        if tok.expires_at is None:
            expiry = "no expiry given"
        else:
            left = tok.expires_at - time.time()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(tok.expires_at))
            expiry = f"{stamp} (in {left:.0f}s)"
        print(f"route:   {route_name}")
        print(f"source:  {tok.how}")
        print(f"expires: {expiry}")
        print(f"refresh token: {'yes' if tok.refresh_token else 'no'}")
        if show:
            print(f"token:   {tok.access_token}")
        return EXIT_OK
    finally:
        await rt.close()
        await store.close()


def cmd_token(args: argparse.Namespace) -> int:
    logs.setup(args.log_format, args.log_level)
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    return run(_token(config, args.route, args.show))


# -- authorize, demo ---------------------------------------------------------------


def cmd_authorize(args: argparse.Namespace) -> int:
    logs.setup(args.log_format, args.log_level)
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    from proxy.cli.authorize import authorize

    return run(authorize(config, args.route, timeout=args.timeout, open_browser=False))


def cmd_demo(args: argparse.Namespace) -> int:
    logs.setup(args.log_format, args.log_level if args.log_level != "info" else "warning")
    from proxy.cli.demo import demo

    return run(demo(keep=args.keep))


# -- parser ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="authproxy",
        description="A forward authenticating reverse proxy: plain HTTP in, "
        "OAuth2/JWT-authenticated requests out.",
    )
    top.add_argument("--version", action="version", version=f"authproxy {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", help="config file (default: $AUTHPROXY_CONFIG, then ./config.yaml)"
    )
    common.add_argument("--log-format", choices=("json", "text"), default="json")
    common.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info"
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="run the proxy")
    p.add_argument(
        "--workers",
        type=int,
        default=os.environ.get("AUTHPROXY_WORKERS", "1"),
        metavar="N",
        help="N processes on the listen port (SO_REUSEPORT), sharing tokens and metrics "
        "(default: $AUTHPROXY_WORKERS, then 1)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "check", parents=[common], help="validate config and resolve secrets (exit 0, or 2)"
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="print the config as parsed, presets expanded, secrets masked",
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the token store, authenticate and run the lock script once",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "token", parents=[common], help="obtain a token for ROUTE and print its expiry"
    )
    p.add_argument("route")
    p.add_argument("--show", action="store_true", help="print the token itself too")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser(
        "authorize",
        parents=[common],
        help="one-time OAuth2 consent for ROUTE; stores the refresh token",
    )
    p.add_argument("route")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the callback")
    p.set_defaults(func=cmd_authorize)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run a built-in provider and the proxy, and show a request flow",
    )
    p.add_argument("--keep", action="store_true", help="keep both running and print curl commands")
    p.set_defaults(func=cmd_demo)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        code = 130
    return code


if __name__ == "__main__":
    sys.exit(main())
