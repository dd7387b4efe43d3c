"""The ``authproxy`` command: its parser, and the dispatch to each subcommand.

Each subcommand lives in its own module, ``proxy.cli.<command>``, with a
``command(args)`` that returns the exit status. It is imported only when it runs,
so that ``--help`` and ``healthcheck`` start fast and ``serve`` never loads what
``authorize`` and ``demo`` need (aiohttp). Each shows only the options it uses.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeAlias

from proxy import __version__
from proxy.cli.common import add_config, add_logging
from proxy.exit_codes import EXIT_FAIL, EXIT_INTERRUPTED

_Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _dispatch(args: argparse.Namespace) -> int:
    """Import the command's module, ``proxy.cli.<command>``, only now, and run it."""
    module = importlib.import_module(f"proxy.cli.{args.command}")
    code: int = module.command(args)
    return code


class _Formatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal; examples (lines of their own) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _command(sub: _Sub, name: str) -> argparse.ArgumentParser:
    summary, description, examples = _HELP[name]
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=_Formatter,
    )


#: each command's one-line summary, description and examples, in --help's order
_HELP: dict[str, tuple[str, str, str]] = {
    "serve": (
        "run the proxy",
        "Run the proxy and its admin port until SIGTERM or SIGINT (the first drains "
        "in-flight requests for shutdown_grace, a second cuts them). SIGHUP, or a "
        "change to the config file, reloads. Under systemd (Type=notify) it sends "
        "READY=1 once listening. Exit 0 after a clean stop, 1 when it cannot listen "
        "or reach the token store, 2 for an invalid config.",
        "  authproxy serve -c /etc/authproxy/config.yaml\n"
        "  AUTHPROXY_CONFIG=config.yaml authproxy serve --log-format text\n"
        "  authproxy serve -c config.yaml --workers 4\n",
    ),
    "check": (
        "validate the config and resolve its secrets (exit 0, or 2)",
        "Read the config, resolve every ${env:} and ${file:} secret, and report every "
        "problem with its key and line. Exit 0 when it is valid, 2 when it is not, 1 "
        "when --connect cannot use the token store.",
        "  authproxy check -c config.yaml\n"
        "  authproxy check -c config.yaml --explain   # presets expanded, secrets masked\n"
        "  authproxy check -c config.yaml --connect   # and reach the Redis token store\n",
    ),
    "token": (
        "obtain a token for ROUTE and print its expiry",
        "Obtain a token for ROUTE as the proxy would (from the token store, else from "
        "the provider) and print its source and expiry; the token itself only with "
        "--show. Exit 0 with a token, 1 when the provider or the store fails, 2 for "
        "an invalid config or an unknown route.",
        "  authproxy token -c config.yaml getpaid\n"
        "  authproxy token -c config.yaml getpaid --show --log-level warning\n",
    ),
    "authorize": (
        "one-time OAuth2 consent for ROUTE; stores the refresh token",
        "For an oauth2_refresh_token ROUTE: print the provider's authorization URL, "
        "wait on the route's loopback redirect_uri for the callback, exchange the code "
        "and store the refresh token where the proxy finds it (a file or redis token "
        "store). Exit 0 stored, 1 denied or failed, 2 when the config cannot be used.",
        "  authproxy authorize -c config.yaml invoiced\n"
        "  authproxy authorize -c config.yaml invoiced --timeout 600\n",
    ),
    "demo": (
        "run a built-in provider and the proxy, and show a request flow",
        "Start a small token provider and the real proxy in front of it, on loopback "
        "only (no config, no network), and walk through login, caching, early refresh, "
        "expiry and a 401 replay, with what the provider counted after each step. "
        "Exit 0 when every request was answered 200.",
        "  authproxy demo\n  authproxy demo --keep   # then try the printed curl commands\n",
    ),
    "healthcheck": (
        "ask a running authproxy's admin port whether it is healthy (exit 0, or 1)",
        "GET /healthz (or /readyz with --ready) on the admin_listen address of the "
        "config, on loopback when it listens on every interface. Exit 0 on a 200, 1 on "
        "anything else: no answer within --timeout, another status, an unreadable "
        "config. For Docker's HEALTHCHECK.",
        "  authproxy healthcheck                      # $AUTHPROXY_CONFIG, then ./config.yaml\n"
        "  authproxy healthcheck -c config.yaml --ready\n"
        '  HEALTHCHECK CMD ["authproxy", "healthcheck"]   # in a Dockerfile\n',
    ),
}


def _serve_options(p: argparse.ArgumentParser) -> None:
    add_config(p)
    add_logging(p)
    p.add_argument(
        "--workers",
        type=int,
        default=os.environ.get("AUTHPROXY_WORKERS", "1"),
        metavar="N",
        help="N processes on the listen port (SO_REUSEPORT), sharing tokens and metrics "
        "(default: $AUTHPROXY_WORKERS, then 1)",
    )


def _check_options(p: argparse.ArgumentParser) -> None:
    add_config(p)
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


def _token_options(p: argparse.ArgumentParser) -> None:
    add_config(p)
    add_logging(p)
    p.add_argument("route", metavar="ROUTE", help="a route name of the config")
    p.add_argument("--show", action="store_true", help="print the token itself too")


def _authorize_options(p: argparse.ArgumentParser) -> None:
    add_config(p)
    add_logging(p)
    p.add_argument("route", metavar="ROUTE", help="an oauth2_refresh_token route of the config")
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the callback (default: 300)",
    )


def _demo_options(p: argparse.ArgumentParser) -> None:
    add_logging(p, level="warning")
    p.add_argument("--keep", action="store_true", help="keep both running and print curl commands")


def _healthcheck_options(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument(
        "--ready", action="store_true", help="ask /readyz (ready for traffic), not /healthz"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="the deadline for the whole request (default: 2)",
    )


#: the options each command uses, and only those
_OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "serve": _serve_options,
    "check": _check_options,
    "token": _token_options,
    "authorize": _authorize_options,
    "demo": _demo_options,
    "healthcheck": _healthcheck_options,
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="authproxy",
        description="A forward authenticating reverse proxy: plain HTTP in, "
        "OAuth2/JWT-authenticated requests out.",
        epilog="`authproxy COMMAND --help` shows a command's options and examples.",
    )
    top.add_argument("--version", action="version", version=f"authproxy {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _HELP:
        _OPTIONS[name](_command(sub, name))
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv``; the exit status."""
    try:
        try:
            args = parser().parse_args(argv)
            code = _dispatch(args)
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        finally:
            sys.stdout.flush()  # here, where a closed pipe can still be caught
    except BrokenPipeError:
        # The reader went away (`authproxy ... | head`): stop quietly, and keep the
        # interpreter's own last flush from failing too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL
    return code


if __name__ == "__main__":
    sys.exit(main())
