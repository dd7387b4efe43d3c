"""``authproxy check``: validate the config and resolve its secrets.

Exit 0 with a one-line summary (or, with ``--explain``, the config as parsed,
presets expanded and secrets masked); 2 with every problem and its line. With
``--connect``, also reach the token store: 1 when that fails.
"""

from __future__ import annotations

import argparse

from proxy.cli.common import load, run
from proxy.exit_codes import EXIT_CONFIG, EXIT_OK


def command(args: argparse.Namespace) -> int:
    config = load(args.config)
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
