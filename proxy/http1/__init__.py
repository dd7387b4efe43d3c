"""HTTP/1.1 on httptools (llhttp), both sides, imported by nothing it imports.

The small API the proxy uses:

* :class:`Server` (``server``) serves a port; its handler gets a :class:`Request`
  (``request``): the head as parsed, ``readany()`` for the body, ``start_lines()``,
  ``write()``, ``end()`` and ``interim()`` for the answer, and ``expire()`` to
  interrupt its handler when a deadline passed (the server owns the task).
* :class:`Pool` (``pool``) sends a request to one origin over kept-alive
  connections (``client``) and returns a :class:`Response` (``response``); every
  connection is opened by :func:`open_connection`.
* :mod:`~proxy.http1.framing` decides a body's framing once and writes it;
  :mod:`~proxy.http1.flow` is the flow control both sides share;
  :mod:`~proxy.http1.errors` the one error tree, which :mod:`proxy.http_errors`
  maps to the proxy's contract.

This package re-exports that API for the proxy; its own modules import from the
module that defines a name, never from here (no cycle through the package).
"""

from __future__ import annotations

from proxy.http1.client import HOP_BY_HOP
from proxy.http1.errors import Http1Error
from proxy.http1.flow import Interrupted
from proxy.http1.pool import Pool, open_connection
from proxy.http1.request import Request
from proxy.http1.response import Response
from proxy.http1.server import Server

__all__ = [
    "HOP_BY_HOP",
    "Http1Error",
    "Interrupted",
    "Pool",
    "Request",
    "Response",
    "Server",
    "open_connection",
]
