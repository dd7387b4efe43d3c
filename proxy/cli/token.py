"""``authproxy token ROUTE``: obtain a token now, as the proxy would, and say
where it came from and when it expires. The token itself only with ``--show``."""

from __future__ import annotations

import argparse
import sys
import time

from proxy import config as configmod
from proxy.cli.common import load, run
from proxy.clock import SystemClock
from proxy.errors import ProxyError
from proxy.exit_codes import EXIT_CONFIG, EXIT_FAIL, EXIT_OK
from proxy.proxying.runtime import RouteRuntime
from proxy.telemetry import logs as logs
from proxy.telemetry.metrics import Metrics
from proxy.tokens.stores.base import StoreError, open_store
from proxy.tokens.token import Token


def command(args: argparse.Namespace) -> int:
    logs.setup(args.log_format, args.log_level)
    config = load(args.config)
    if config is None:
        return EXIT_CONFIG
    return run(obtain(config, args.route, args.show))


async def obtain(config: configmod.Config, route_name: str, show: bool) -> int:
    """Fetch (or load from the store) ``route_name``'s token and print it; exit status."""
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
        _describe(route_name, tok, show)
        return EXIT_OK
    finally:
        await rt.close()
        await store.close()


def _describe(route_name: str, tok: Token, show: bool) -> None:
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
