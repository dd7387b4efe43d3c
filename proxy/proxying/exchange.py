"""One request's own state on its way through the proxy: its id, what it did.

:class:`Exchange` is filled in by the handler and the forwarder and read by the
access log (:func:`proxy.telemetry.logs.access`) and by the exchange's deadline
(:mod:`proxy.proxying.deadline`).
"""

from __future__ import annotations

import itertools
import os

#: request ids: a random 64-bit start, counted up (os.urandom per request is a syscall)
_ids = itertools.count(int.from_bytes(os.urandom(8), "big"))


def new_request_id() -> str:
    """A fresh request id for the logs: 16 hex digits, unique within this process and,
    from its random start, across processes. (Not a secret: a client may choose its own.)"""
    return "%016x" % (next(_ids) & 0xFFFFFFFFFFFFFFFF)


class Exchange:
    """What one request did, filled in by the forwarder, read by the access log."""

    __slots__ = (
        "request_id", "token_fetched", "replayed", "upstream_s", "bytes_in", "bytes_out",
        "timed_out",
    )  # fmt: skip

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        #: this request waited for a token fetch (no usable token was cached)
        self.token_fetched = False
        #: an upstream 401 made the proxy replay this request with a fresh token
        self.replayed = False
        self.upstream_s = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        #: the route's timeout ran out for this exchange
        self.timed_out = False


__all__ = ["Exchange", "new_request_id"]
