"""The exit status of every ``authproxy`` command, defined once.

    EXIT_OK      0  done, healthy, config valid
    EXIT_FAIL    1  a run-time failure: cannot listen, store unreachable, token
                    refused, unhealthy (``healthcheck``), a stop cut short
    EXIT_CONFIG  2  the configuration or the command line cannot be used
                    (argparse's usage errors are 2 as well)

At the root of the package so that the supervisor of ``serve --workers``
(:mod:`proxy.ops.workers`) and the commands (:mod:`proxy.cli`) share it.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAIL: Final = 1
EXIT_CONFIG: Final = 2
#: killed by Ctrl-C (SIGINT) before it finished: the shell's 128 + 2
EXIT_INTERRUPTED: Final = 130

__all__ = ["EXIT_CONFIG", "EXIT_FAIL", "EXIT_INTERRUPTED", "EXIT_OK"]
