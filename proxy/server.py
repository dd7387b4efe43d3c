"""Kept for imports from before the move: the server is :mod:`proxy.http1.server`."""

from __future__ import annotations

from proxy.http1 import Deadlines, Request, Server, new_request_id

__all__ = ["Deadlines", "Request", "Server", "new_request_id"]
