"""Forwarding one request through a route: headers, streaming, one 401 replay.

Bodies stream both ways and are never decompressed or re-encoded. A request
body is buffered only when a 401 could need it replayed (up to
``max_replay_body``); larger bodies stream and their 401 goes to the client.
Only a 401 is ever replayed: any other failure reaches the upstream at most once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, istr
from yarl import URL

from proxy.errors import BodyTooLarge, ProxyError, UpstreamTimeout, UpstreamUnavailable
from proxy.logs import Exchange
from proxy.route import RouteRuntime
from proxy.routing import Match, join_upstream
from proxy.tokens import Token

log = logging.getLogger("authproxy.forward")

# Header names are compared lowercased: istr equality is case-sensitive, so a
# client's "host" or "x-authproxy-token" would otherwise slip past these sets.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Trailers", "Transfer-Encoding", "Upgrade", "Proxy-Connection",
    )
)  # fmt: skip
#: never forwarded upstream, whatever the route: the proxy's own or recomputed
REQUEST_DROP = HOP_BY_HOP | {
    "host", "expect", "x-authproxy-token",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
}  # fmt: skip
AUTHORIZATION = istr("Authorization")
CONNECTION = istr("Connection")
X_REQUEST_ID = istr("X-Request-Id")
X_FORWARDED_FOR = istr("X-Forwarded-For")
X_FORWARDED_PROTO = istr("X-Forwarded-Proto")
X_FORWARDED_HOST = istr("X-Forwarded-Host")
CONTENT_LENGTH = istr("Content-Length")

#: a 401 answer smaller than this is read, so its connection can be reused
_DRAIN_LIMIT = 64 * 1024
_CHUNK = 64 * 1024


def _connection_listed(headers: Any) -> frozenset[str]:
    """Header names (lowercased) a ``Connection`` header marks as hop-by-hop."""
    values = headers.getall(CONNECTION, ())
    if not values:
        return frozenset()
    return frozenset(n.strip().lower() for v in values for n in v.split(",") if n.strip())


def upstream_headers(
    request: web.BaseRequest, route: RouteRuntime, request_id: str | None = None
) -> CIMultiDict[str]:
    """The client's headers as the upstream should see them, without credentials."""
    src = request.headers
    drop = REQUEST_DROP | _connection_listed(src) if CONNECTION in src else REQUEST_DROP
    keep_auth = route.config.pass_client_authorization
    injected = route.header.lower() if route.header is not None else None
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in src.items():
        key = name.lower()
        if key in drop:
            continue
        if key == "authorization" and not keep_auth:
            continue
        if key == injected and not (keep_auth and key == "authorization"):
            continue
        out.add(name, value)
    peer = request.remote or ""
    prior = src.get(X_FORWARDED_FOR)
    if peer:
        out[X_FORWARDED_FOR] = f"{prior}, {peer}" if prior else peer
    elif prior:
        out[X_FORWARDED_FOR] = prior
    out[X_FORWARDED_PROTO] = request.scheme
    host = src.get("Host")
    if host:
        out[X_FORWARDED_HOST] = host
    if X_REQUEST_ID not in out:
        out[X_REQUEST_ID] = request_id or os.urandom(8).hex()
    return out


def response_headers(resp: aiohttp.ClientResponse) -> CIMultiDict[str]:
    """The upstream's headers as the client should see them (duplicates kept)."""
    listed = _connection_listed(resp.headers) if CONNECTION in resp.headers else frozenset()
    out: CIMultiDict[str] = CIMultiDict()
    for raw_name, raw_value in resp.raw_headers:
        name = raw_name.decode("latin-1")
        key = name.lower()
        if key in HOP_BY_HOP or key in listed:
            continue
        out.add(name, raw_value.decode("latin-1"))
    return out


class _Body:
    """A request body streamed upstream, counted against ``max_body``."""

    def __init__(self, content: aiohttp.StreamReader, prefix: bytes, limit: int) -> None:
        self.content = content
        self.prefix = prefix
        self.limit = limit
        self.too_large = False
        self.total = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        total = self.total = len(self.prefix)
        if self.prefix:
            yield self.prefix
        while True:
            chunk = await self.content.readany()
            if not chunk:
                return
            total += len(chunk)
            self.total = total
            if total > self.limit:
                self.too_large = True
                raise BodyTooLarge(f"the request body is larger than {self.limit} bytes")
            yield chunk


async def _read_up_to(content: aiohttp.StreamReader, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.readany()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


async def _release(resp: aiohttp.ClientResponse) -> None:
    """Discard an answer we will not pass on, keeping its connection when cheap."""
    length = resp.content_length
    if length is not None and length <= _DRAIN_LIMIT:
        try:
            await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            pass
    resp.release() if length is not None and length <= _DRAIN_LIMIT else resp.close()


async def forward(
    request: web.BaseRequest, route: RouteRuntime, match: Match[Any], ex: Exchange | None = None
) -> web.StreamResponse:
    """Send ``request`` upstream through ``route`` and stream the answer back.

    ``ex``, when given, is filled in for the access log (request id, token
    fetched or replayed, upstream time, bytes both ways).
    """
    config = route.config
    length = request.content_length
    if length is not None and length > config.max_body:
        raise BodyTooLarge(f"the request body is larger than {config.max_body} bytes")
    headers = upstream_headers(request, route, ex.request_id if ex is not None else None)
    url = URL(route.origin + join_upstream(route.base_path, match.rest, match.query), encoded=True)
    manager = route.manager

    # The body: buffered when a 401 replay may need it, streamed otherwise.
    body: bytes | AsyncIterator[bytes] | None = None
    streamed: _Body | None = None
    replayable = True
    if request.body_exists:
        may_replay = manager is not None and config.retry_on_401
        if may_replay and length is not None and length <= config.max_replay_body:
            body = await request.read()
        elif may_replay and length is None:
            head = await _read_up_to(request.content, config.max_replay_body)
            if len(head) > config.max_body:
                raise BodyTooLarge(f"the request body is larger than {config.max_body} bytes")
            if request.content.at_eof():
                body = head
            else:
                streamed = _Body(request.content, head, config.max_body)
        else:
            streamed = _Body(request.content, b"", config.max_body)
        if streamed is not None:
            body = streamed.chunks()
            replayable = False

    token: Token | None = None
    if manager is not None:
        cached = manager.token
        token = await manager.get()
        if ex is not None and token is not cached:
            ex.token_fetched = True
        headers[route.header] = route.auth_value(token.access_token)  # type: ignore[index]
    elif route.static_value is not None:
        headers[route.header] = route.static_value  # type: ignore[index]

    resp = await _send(request, route, url, headers, body, streamed, ex)
    if resp.status == 401 and token is not None and manager is not None and config.retry_on_401:
        manager.invalidate(token)
        if not replayable:
            route.count_retry("not_replayable")
        else:
            await _release(resp)
            try:
                token = await manager.get()
            except ProxyError:
                route.count_retry("failed")
                raise
            headers[route.header] = route.auth_value(token.access_token)  # type: ignore[index]
            resp = await _send(request, route, url, headers, body, None, ex)
            route.count_retry("failed" if resp.status == 401 else "replayed")
            if ex is not None:
                ex.replayed = True
    if ex is not None:
        ex.bytes_in = len(body) if isinstance(body, bytes) else (streamed.total if streamed else 0)
    return await _stream_back(request, route, resp, ex)


async def _send(
    request: web.BaseRequest,
    route: RouteRuntime,
    url: URL,
    headers: CIMultiDict[str],
    body: bytes | AsyncIterator[bytes] | None,
    streamed: _Body | None,
    ex: Exchange | None = None,
) -> aiohttp.ClientResponse:
    started = time.perf_counter()
    try:
        resp = await route.session.request(
            request.method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            compress=False,
        )
    except BodyTooLarge:
        raise
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"upstream did not answer within {route.config.timeout:g}s", route=route.name
        ) from exc
    except aiohttp.ClientError as exc:
        if streamed is not None and streamed.too_large:
            raise BodyTooLarge(
                f"the request body is larger than {streamed.limit} bytes", route=route.name
            ) from exc
        raise UpstreamUnavailable(
            f"upstream connection failed ({type(exc).__name__})", route=route.name
        ) from exc
    elapsed = time.perf_counter() - started
    route.m_upstream.observe(elapsed)
    if ex is not None:
        ex.upstream_s += elapsed
    return resp


async def _stream_back(
    request: web.BaseRequest,
    route: RouteRuntime,
    resp: aiohttp.ClientResponse,
    ex: Exchange | None = None,
) -> web.StreamResponse:
    # All of the upstream's headers, duplicates (Set-Cookie) included.
    out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=response_headers(resp))
    try:
        await out.prepare(request)
        if request.method != "HEAD":
            content = resp.content
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                if ex is not None:
                    ex.bytes_out += len(chunk)
                await out.write(chunk)
        await out.write_eof()
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        # Headers are gone already: the only honest signal left is to cut the
        # connection, so the client sees a truncated answer, never a complete one.
        log.warning(
            "stream aborted mid-answer: %s", type(exc).__name__, extra={"route": route.name}
        )
        resp.close()
        transport = request.transport
        if transport is not None:
            transport.close()
        out.force_close()
        return out
    finally:
        resp.release()
    return out
