"""What the subcommands share: their options, the config load, the event loop."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from typing import Any

from proxy import config as configmod
from proxy.telemetry import logs as logs

#: the ``-c`` option's text, the same in every command that reads a config
CONFIG_HELP = "config file (default: $AUTHPROXY_CONFIG, then ./config.yaml)"


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)


def add_logging(p: argparse.ArgumentParser, *, level: str = "info") -> None:
    p.add_argument(
        "--log-format",
        choices=("json", "text"),
        default="json",
        help="log lines on stderr: one JSON object each (default), or text for people",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=level,
        help=f"the least severe level logged (default: {level})",
    )


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: int = uvloop.run(coro)
    return result


def config_path(option: str | None) -> str:
    """The file ``-c`` names, else $AUTHPROXY_CONFIG, else ./config.yaml."""
    return option or configmod.default_path()


def load(path: str | None) -> configmod.Config | None:
    """The config at ``path`` (see :func:`config_path`), or None once every
    problem in it is told (:func:`proxy.telemetry.logs.startup_error`)."""
    path = config_path(path)
    try:
        return configmod.load(path)
    except configmod.ConfigError as exc:
        details = [problem.format(exc.source) for problem in exc.problems]
        logs.startup_error(f"invalid configuration ({len(details)} problem(s))", details)
        return None
