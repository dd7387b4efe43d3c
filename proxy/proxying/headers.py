"""The headers of a forwarded exchange: the upstream's request head, the client's answer fields.

The upstream request head is written as bytes straight from the client's raw
headers: per request the proxy only filters names and appends its own headers.
"""

from __future__ import annotations

from proxy.http1.client import HOP_BY_HOP
from proxy.http1.request import Request
from proxy.http1.response import Response
from proxy.proxying.runtime import RouteRuntime

#: never copied from the client: hop-by-hop, the proxy's own, or recomputed below
REQUEST_DROP = HOP_BY_HOP | {
    b"host", b"expect", b"x-authproxy-token", b"content-length", b"x-request-id",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
}  # fmt: skip


def _listed(values: list[str] | list[bytes]) -> frozenset[bytes]:
    """Header names (lowercased) that ``Connection`` headers mark as hop-by-hop."""
    names: set[bytes] = set()
    for v in values:
        raw = v.encode("latin-1") if isinstance(v, str) else v
        names.update(n.strip().lower() for n in raw.split(b",") if n.strip())
    return frozenset(names)


def request_head(
    request: Request,
    route: RouteRuntime,
    target: str,
    request_id: str,
    auth_line: bytes | None,
    framing: bytes,
) -> bytes:
    """The request line and headers for the upstream, as bytes.

    The client's headers are copied in order, without hop-by-hop ones (and those
    its ``Connection`` names), without its credentials unless the route passes
    them, and without the header the route injects. ``framing`` is the
    Content-Length or Transfer-Encoding line for the body actually sent.
    """
    drop = _drop_set(not route.config.pass_client_authorization, route.header_key)
    if request.connection is not None:
        drop = drop | _listed(request.connection)
    out = [
        request.method.encode(), b" ", target.encode("utf-8", "surrogateescape"),
        b" HTTP/1.1\r\nHost: ", route.host_header, b"\r\n",
    ]  # fmt: skip
    prior_xff = host = b""
    for name, value in request.raw_headers:
        key = name.lower()
        if key in drop:
            if key == b"x-forwarded-for":
                prior_xff = value
            elif key == b"host":
                host = value
            continue
        out += (name, b": ", value, b"\r\n")
    peer = request.remote
    if peer:
        xff = prior_xff + b", " + peer.encode() if prior_xff else peer.encode()
        out += (b"X-Forwarded-For: ", xff, b"\r\nX-Forwarded-Proto: http\r\n")
    elif prior_xff:
        out += (b"X-Forwarded-For: ", prior_xff, b"\r\nX-Forwarded-Proto: http\r\n")
    else:
        out.append(b"X-Forwarded-Proto: http\r\n")
    rid = request_id.encode("latin-1", "replace")
    if host:
        out += (b"X-Forwarded-Host: ", host, b"\r\nX-Request-Id: ", rid, b"\r\n")
    else:
        out += (b"X-Request-Id: ", rid, b"\r\n")
    if auth_line is not None:
        out += (auth_line, framing, b"\r\n")
    else:
        out += (framing, b"\r\n")
    return b"".join(out)


#: REQUEST_DROP plus the client's credentials and the injected header, by
#: (credentials dropped, injected header's name)
_DROP_SETS: dict[tuple[bool, bytes | None], frozenset[bytes]] = {}


def _drop_set(skip_auth: bool, injected: bytes | None) -> frozenset[bytes]:
    """The names of the client's header fields not copied upstream (lowercased)."""
    drop = _DROP_SETS.get((skip_auth, injected))
    if drop is None:
        extra: set[bytes] = set()
        if skip_auth:
            extra.add(b"authorization")
        if injected is not None and (skip_auth or injected != b"authorization"):
            extra.add(injected)
        drop = REQUEST_DROP | extra
        if len(_DROP_SETS) < 64:
            _DROP_SETS[(skip_auth, injected)] = drop
    return drop


#: parsed ``Connection`` values; upstreams send the same few ("keep-alive", "close")
_CONNECTION_VALUES: dict[bytes, frozenset[bytes]] = {}


def response_lines(resp: Response) -> tuple[list[bytes], int | None]:
    """The upstream's header fields as the client should see them (duplicates kept), as
    the pieces of their lines, and the Content-Length among them (None when none).

    The upstream client set the hop-by-hop fields apart while parsing; here only the
    fields an answer's ``Connection`` names are left out (a rare second pass).
    """
    lines = resp.lines
    length = resp.content_length
    connection = resp.connection
    if connection is not None:
        listed: frozenset[bytes] | None = None
        for value in connection:
            names = _CONNECTION_VALUES.get(value)
            if names is None:
                # hop-by-hop names are dropped anyway, and "close" is no header name:
                # "Connection: keep-alive" then costs no second pass below
                names = _listed([value]) - HOP_BY_HOP - {b"close"}
                if len(_CONNECTION_VALUES) < 64:
                    _CONNECTION_VALUES[value] = names
            if names:
                listed = names if listed is None else listed | names
        if listed is not None:
            kept: list[bytes] = []
            for i in range(0, len(lines), 4):
                if lines[i].lower() not in listed:
                    kept += lines[i : i + 4]
            lines = kept
            if b"content-length" in listed:
                length = None
    return lines, None if length is None else int(length)


__all__ = ["REQUEST_DROP", "request_head", "response_lines"]
