"""Routing: which route a request target belongs to, and where it goes. Pure, no I/O.

The longest matching prefix wins. The rest of the path, still percent-encoded
exactly as the client sent it, is appended to the upstream's path, and the raw
query string is kept byte for byte. A target that could reach outside its
prefix once decoded (``..``, ``%2e%2e``, ``%2f..``, backslashes) is refused:
whatever the upstream's normaliser does, it must stay under the route's base.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote_to_bytes

from proxy.errors import BadRequest, NoRoute

R = TypeVar("R")


@dataclass(slots=True)
class Match(Generic[R]):  # not frozen: one per request, and frozen __init__ costs more
    route: R
    #: the path after the prefix, raw (percent-encoded as received)
    rest: str
    #: the raw query string without '?', or None when the target had no '?'
    query: str | None


class Router(Generic[R]):
    """Maps raw request targets to routes by longest prefix.

    ``entries`` are ``(prefix, route)`` pairs; each prefix starts and ends with '/'.
    A target equal to a prefix without its trailing slash (``/invoiceng``) matches too.
    """

    def __init__(self, entries: Iterable[tuple[str, R]]) -> None:
        # Longest first, so that the first hit is the longest match.
        self._entries = sorted(entries, key=lambda e: len(e[0]), reverse=True)
        self._exact = {p[:-1]: (p, r) for p, r in self._entries if len(p) > 1}

    def match(self, target: str) -> Match[R]:
        """Route the raw request target (path and query, as on the request line)."""
        if not target.startswith("/"):
            raise BadRequest("only origin-form request targets (/path) are served")
        path, sep, query = target.partition("?")
        if "#" in path:
            path = path.partition("#")[0]
        for prefix, route in self._entries:
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                check_rest(rest)
                return Match(route, rest, query if sep else None)
        hit = self._exact.get(path)
        if hit is not None:
            return Match(hit[1], "", query if sep else None)
        raise NoRoute("no route matches this path")


def check_rest(rest: str) -> None:
    """Refuse a path remainder that could climb out of its prefix when normalised."""
    if not rest:
        return
    # The common case: nothing to decode and nothing that could form a '.', '..',
    # NUL or empty segment. Four scans in C instead of the decoding below.
    if (
        "%" not in rest
        and "." not in rest
        and "\\" not in rest
        and "\x00" not in rest
        and rest[0] != "/"
    ):
        return
    check_decoded(rest)


def check_decoded(rest: str) -> None:
    """:func:`check_rest` without its fast path: decode, then check every segment."""
    # Work on bytes: a percent-escape need not be UTF-8 (``%e9``), and such a path is
    # the upstream's business, not an error of ours.
    decoded = rest.encode("utf-8", "surrogatepass")
    # Decode until stable (each step shortens the path), so that no depth of encoding
    # can smuggle a '..' through an upstream that decodes more than once.
    while b"%" in decoded:
        step = unquote_to_bytes(decoded)
        if step == decoded:
            break
        decoded = step
    if b"\x00" in decoded:
        raise BadRequest("the path contains a NUL byte")
    for segment in decoded.replace(b"\\", b"/").split(b"/"):
        if segment in (b"..", b"."):
            raise BadRequest("the path leaves its route prefix ('.' or '..' segment)")
    if decoded.startswith(b"/"):
        raise BadRequest("the path leaves its route prefix (empty segment after prefix)")


def join_upstream(base_path: str, rest: str, query: str | None) -> str:
    """``/v1/`` + ``invoices/7`` + ``a=1`` -> ``/v1/invoices/7?a=1`` (all raw)."""
    if query is None:
        return base_path + rest
    return f"{base_path}{rest}?{query}"
