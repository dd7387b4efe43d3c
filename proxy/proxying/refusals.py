"""What the proxy port refuses before any route sees it: logged (rate-limited) and counted.

A 400/414/431 given while parsing (an oversized head, a garbage request line, a
Transfer-Encoding other than chunked, a smuggling shape) and a connection the
kernel could not hand over (out of file descriptors) are what a hostile or broken
client looks like from here; a flood of them must not flood the log too. Each kind
logs at most one line per 10 s (:class:`~proxy.telemetry.throttle.Throttle`), with
``suppressed``: how many were not logged before it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
from typing import Any

from proxy.errors import error_answer
from proxy.http1.errors import Http1Error
from proxy.http1.server import Server
from proxy.http_errors import client_refusal
from proxy.proxying.exchange import new_request_id
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.throttle import Throttle

log = logging.getLogger("authproxy.server")

#: accept() failures that mean "out of descriptors or memory", not a bug
_RESOURCE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def refusal_answer(exc: Http1Error) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The contract's answer for a refusal made while parsing (the server's hook),
    with a request id of its own, as every answer of the proxy has."""
    status, headers, body = error_answer(client_refusal(exc))
    headers.append((b"X-Request-Id", new_request_id().encode()))
    return status, headers, body


class Refusals:
    """The proxy port's ``on_refused`` hook and the loop's accept-error handler."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._throttle = Throttle()
        self.accept_errors = 0

    def on_refused(self, err: Http1Error, peer: str | None) -> None:
        code = client_refusal(err).code
        self.metrics.proxy_errors.labels("", code).inc()
        self._throttle.log(
            log, logging.WARNING, ("parse",),
            "refused a request while parsing it: %s (%d)", err.message, err.status,
            extra={"route": "", "status": err.status, "error": code, "client": peer or "unix"},
        )  # fmt: skip

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Catch accept() failures (out of fds): asyncio and uvloop report them to the
        loop's exception handler, and the client is reset with no other trace."""
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if isinstance(exc, OSError) and exc.errno in _RESOURCE:
                self.accept_failed(exc)
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    async def watch_fds(self, server: Server, every: float = 1.0) -> None:
        """Under uvloop, libuv accepts and closes connections it has no descriptor for
        (its "EMFILE trick") and tells nobody: look, once a second while the proxy
        port holds at least half the fd limit, whether the limit is reached."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return
        while True:
            await asyncio.sleep(every)
            if len(server.connections) < soft // 2:
                continue
            try:
                used = len(os.listdir("/proc/self/fd"))
            except OSError:
                return  # no procfs: nothing to watch with
            if used >= soft - 4:
                msg = f"file descriptors exhausted ({used} of {soft} in use)"
                self.accept_failed(OSError(errno.EMFILE, msg))

    def accept_failed(self, exc: OSError) -> None:
        self.accept_errors += 1
        self.metrics.proxy_errors.labels("", "accept_failed").inc()
        self._throttle.log(
            log, logging.ERROR, ("accept",),
            "cannot accept a connection: %s; new clients are refused until "
            "descriptors are free (raise the fd limit, or lower max_concurrent)",
            exc.strerror or exc,
            extra={"route": ""},
        )  # fmt: skip


__all__ = ["Refusals", "refusal_answer"]
