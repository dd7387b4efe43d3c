"""Forwarding one request through a route: headers, streaming, one 401 replay.

Bodies stream both ways and are never decompressed or re-encoded. A request
body is buffered only when a 401 could need it replayed (up to
``max_replay_body``); larger bodies stream and their 401 goes to the client.
Only a 401 is ever replayed: any other failure reaches the upstream at most once.

The upstream request head is written as bytes straight from the client's raw
headers (see :mod:`proxy.upstream` for why the hot path does not use aiohttp's
client): per request the proxy only filters names and appends its own headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from proxy.errors import BodyTooLarge, ProxyError, UpstreamTimeout, UpstreamUnavailable
from proxy.logs import Exchange
from proxy.route import RouteRuntime
from proxy.routing import Match, join_upstream
from proxy.server import Deadlines, Request
from proxy.tokens import Token
from proxy.upstream import HOP_BY_HOP, UpstreamError, UpstreamResponse

log = logging.getLogger("authproxy.forward")

#: never copied from the client: hop-by-hop, the proxy's own, or recomputed below
REQUEST_DROP = HOP_BY_HOP | {
    b"host", b"expect", b"x-authproxy-token", b"content-length", b"x-request-id",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
}  # fmt: skip

#: a 401 answer smaller than this is read, so its connection can be reused
_DRAIN_LIMIT = 64 * 1024


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


def response_lines(resp: UpstreamResponse) -> tuple[list[bytes], int | None]:
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


class _Body:
    """A request body streamed upstream, counted against ``max_body``."""

    def __init__(self, content: Request, prefix: bytes, limit: int) -> None:
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


async def _read_up_to(content: Request, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.readany()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


async def _discard(resp: UpstreamResponse) -> None:
    """Drop an answer we will not pass on, keeping its connection when cheap."""
    try:
        await resp.read_all(_DRAIN_LIMIT)
    except UpstreamError:
        resp.close()
        return
    resp.release()


async def forward(
    request: Request, route: RouteRuntime, match: Match[Any], ex: Exchange | None = None
) -> None:
    """Send ``request`` upstream through ``route`` and stream the answer back.

    ``ex``, when given, is filled in for the access log (request id, token
    fetched or replayed, upstream time, bytes both ways).
    """
    config = route.config
    length = request.content_length
    if length is not None and length > config.max_body:
        raise BodyTooLarge(f"the request body is larger than {config.max_body} bytes")
    target = join_upstream(route.base_path, match.rest, match.query)
    manager = route.manager
    if ex is None:
        ex = Exchange(request.request_id or "")

    # The body: buffered when a 401 replay may need it, streamed otherwise.
    body: bytes | AsyncIterator[bytes] | None = None
    streamed: _Body | None = None
    if not (request.chunked or length):  # no body (request.body_exists, inline)
        # Keep an explicit "Content-Length: 0" (a POST may need it).
        framing = b"Content-Length: 0\r\n" if length == 0 else b""
    else:
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
        if isinstance(body, bytes):
            framing = b"Content-Length: %d\r\n" % len(body)
        else:  # streamed
            framing = (
                b"Content-Length: %d\r\n" % length
                if length is not None
                else b"Transfer-Encoding: chunked\r\n"
            )

    token: Token | None = None
    auth_line = route.static_line
    if manager is not None:
        cached = manager.token
        token = await manager.get()
        if token is not cached:
            ex.token_fetched = True
        auth_line = route.auth_for(token, request.method, target)

    # The whole exchange has one deadline, which cancels this task: what
    # asyncio.timeout() does, at a fraction of its per-request cost (see
    # server.Deadlines: one loop timer for all exchanges, not one each).
    task = request.task  # the handler runs in its connection's task
    if task is None:
        task = asyncio.current_task()
        assert task is not None
    wheel = _wheel
    if wheel is None or wheel.loop is not task.get_loop():
        wheel = _new_wheel(task.get_loop())
    deadline = wheel.add(config.timeout, ex, task)
    try:
        head = request_head(request, route, target, ex.request_id, auth_line, framing)
        # The first send, inline (see _send, which the replay uses).
        started = time.perf_counter()
        try:
            resp = await route.pool.request(
                request.method, head, body, chunked=streamed is not None and b"chunked" in head
            )
        except UpstreamError as exc:
            raise _send_failed(exc, route, streamed) from exc
        elapsed = time.perf_counter() - started
        route.m_upstream.observe(elapsed)
        ex.upstream_s += elapsed
        if resp.status == 401 and token is not None and manager is not None:
            if config.retry_on_401:
                resp = await _replay_401(
                    request, route, token, resp, body, streamed, ex, target, framing
                )
                token = None
        if isinstance(body, bytes):
            ex.bytes_in = len(body)
        elif streamed is not None:
            ex.bytes_in = streamed.total
        if not _answer_start(request, route, resp, ex):
            await _stream_rest(request, route, resp, ex)
    except asyncio.CancelledError:
        if not ex.timed_out:
            raise  # cancelled by someone else (shutdown): not ours to swallow
        task.uncancel()
        if request.started:
            _cut(request, route, "the whole exchange took longer than the route's timeout")
            return
        raise UpstreamTimeout(
            f"upstream did not answer within {config.timeout:g}s", route=route.name
        ) from None
    finally:
        deadline.pop(ex, None)


def _expire(ex: Exchange, task: asyncio.Task[Any]) -> None:
    ex.timed_out = True
    task.cancel()


#: the exchange deadlines of the running loop
_wheel: Deadlines[Exchange, asyncio.Task[Any]] | None = None


def _new_wheel(loop: asyncio.AbstractEventLoop) -> Deadlines[Exchange, asyncio.Task[Any]]:
    # Another loop than the last one (tests run many): deadlines already added stay
    # with the old wheel, whose timer still fires on its own loop.
    global _wheel
    _wheel = Deadlines(loop, _expire)
    return _wheel


async def _replay_401(
    request: Request,
    route: RouteRuntime,
    token: Token,
    resp: UpstreamResponse,
    body: bytes | AsyncIterator[bytes] | None,
    streamed: _Body | None,
    ex: Exchange,
    target: str,
    framing: bytes,
) -> UpstreamResponse:
    """The upstream refused ``token``: drop it, and replay once if the body allows."""
    manager = route.manager
    assert manager is not None
    if streamed is None and route.dpop_challenge(target, resp.headers):
        # RFC 9449 9: the resource server wants a nonce; the same token, a new proof.
        await _discard(resp)
        head = request_head(
            request, route, target, ex.request_id, route.auth_for(token, request.method, target),
            framing,
        )  # fmt: skip
        resp = await _send(request, route, head, body, None, ex)
        if resp.status != 401:
            return resp
    if manager.refused(token) == "refused_fresh":
        # A fresh token refused again: the 401 goes to the client as it came.
        route.count_retry("refused_fresh")
        return resp
    if streamed is not None:
        route.count_retry("not_replayable")
        return resp
    await _discard(resp)
    try:
        fresh = await manager.get()
    except ProxyError:
        route.count_retry("failed")
        raise
    auth = route.auth_for(fresh, request.method, target)
    head = request_head(request, route, target, ex.request_id, auth, framing)
    again = await _send(request, route, head, body, None, ex)
    manager.replayed(fresh, again.status)
    route.count_retry("failed" if again.status == 401 else "replayed")
    ex.replayed = True
    return again


async def _send(
    request: Request,
    route: RouteRuntime,
    head: bytes,
    body: bytes | AsyncIterator[bytes] | None,
    streamed: _Body | None,
    ex: Exchange,
) -> UpstreamResponse:
    started = time.perf_counter()
    try:
        resp = await route.pool.request(
            request.method, head, body, chunked=streamed is not None and b"chunked" in head
        )
    except UpstreamError as exc:
        raise _send_failed(exc, route, streamed) from exc
    elapsed = time.perf_counter() - started
    route.m_upstream.observe(elapsed)
    ex.upstream_s += elapsed
    return resp


def _send_failed(exc: UpstreamError, route: RouteRuntime, streamed: _Body | None) -> ProxyError:
    """The error to answer for a failed send."""
    if streamed is not None and streamed.too_large:
        return BodyTooLarge(
            f"the request body is larger than {streamed.limit} bytes", route=route.name
        )
    if exc.timeout:
        return UpstreamTimeout(str(exc), route=route.name)
    return UpstreamUnavailable(str(exc), route=route.name)


def _cut(request: Request, route: RouteRuntime, why: str) -> None:
    """Headers are gone already: the only honest signal left is to cut the
    connection, so the client sees a truncated answer, never a complete one."""
    log.warning("stream aborted mid-answer: %s", why, extra={"route": route.name})
    transport = request.transport
    if transport is not None:
        transport.abort()


def _answer_start(
    request: Request,
    route: RouteRuntime,
    resp: UpstreamResponse,
    ex: Exchange,
) -> bool:
    """Write the answer's head; True when that was all of the answer (or the client is
    gone), False when the rest of the body is to be streamed (:func:`_stream_rest`)."""
    lines, length = response_lines(resp)
    try:
        if request.method == "HEAD":
            request.start_lines(resp.status, resp.reason, lines, length=length, end=True)
        else:
            # What of the body is here already goes out in the same write as the headers
            # (one syscall fewer), all of it when it is all here. Otherwise the headers
            # go first, so a client of a slow or streaming answer sees them at once.
            first, end = resp.read_ready()
            ex.bytes_out += len(first)
            request.start_lines(resp.status, resp.reason, lines, length=length, body=first, end=end)
            if not end:
                return False
    except ConnectionError:
        # The client went away: nothing to tell it; free the upstream connection.
        resp.close()
        return True
    except BaseException:
        resp.close()
        raise
    resp.release()
    return True


async def _stream_rest(
    request: Request,
    route: RouteRuntime,
    resp: UpstreamResponse,
    ex: Exchange,
) -> None:
    """The rest of the answer's body, as it comes (flow control both ways)."""
    try:
        while True:
            chunk = await resp.read()
            if not chunk:
                break
            ex.bytes_out += len(chunk)
            await request.write(chunk)
        request.end()
    except UpstreamError as exc:
        resp.close()
        if request.started:
            _cut(request, route, str(exc))
            return
        raise UpstreamUnavailable(str(exc), route=route.name) from exc
    except ConnectionError:
        # The client went away: nothing to tell it; free the upstream connection.
        resp.close()
        return
    except BaseException:
        resp.close()
        raise
    resp.release()
