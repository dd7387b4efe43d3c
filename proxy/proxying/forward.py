"""Forwarding one request through a route: streaming both ways, one 401 replay.

Bodies stream both ways and are never decompressed or re-encoded. A request
body is buffered only when a 401 could need it replayed (up to
``max_replay_body``, and while all routes together buffer less than
``limits.max_replay_total``); larger bodies stream and their 401 goes to the client.
Only a 401 is ever replayed: any other failure reaches the upstream at most once.
The body's framing towards the upstream is decided once, from what the parser
reported (:func:`proxy.http1.framing.request_framing`).

Timeouts (one loop timer for all exchanges, see :class:`proxy.proxying.deadline.Deadlines`):
``body_timeout`` while the client's body does not arrive (408), ``read_timeout``
while a body streams with no progress either way, ``timeout`` from the request
sent to the answer's head (504). Each re-arms the exchange's one deadline entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine

from proxy.errors import (
    BodyTooLarge,
    ProxyError,
    RequestTimeout,
    UpgradeNotSupported,
    UpstreamTimeout,
)
from proxy.http1.errors import Http1Error
from proxy.http1.framing import LENGTH, request_framing
from proxy.http1.request import Request
from proxy.http1.response import Response
from proxy.http_errors import client_refusal, upstream_error
from proxy.proxying.deadline import BODY, HEAD, READ, Clock
from proxy.proxying.exchange import Exchange
from proxy.proxying.headers import request_head, response_lines
from proxy.proxying.replay import ReplayBudget
from proxy.proxying.request_body import Body, StreamedBody
from proxy.proxying.router import Match, join_upstream
from proxy.proxying.runtime import RouteRuntime
from proxy.tokens.manager import Token, TokenManager

log = logging.getLogger("authproxy.forward")

#: a 401 answer smaller than this is read, so its connection can be reused
_DRAIN_LIMIT = 64 * 1024


async def _discard(resp: Response) -> None:
    """Drop an answer we will not pass on, keeping its connection when cheap."""
    try:
        await resp.read_all(_DRAIN_LIMIT)
    except Http1Error:
        resp.close()
        return
    resp.release()


def forward(
    request: Request,
    route: RouteRuntime,
    match: Match[RouteRuntime],
    ex: Exchange | None = None,
    budget: ReplayBudget | None = None,
) -> Coroutine[object, object, None]:
    """Send ``request`` upstream through ``route`` and stream the answer back.

    ``ex``, when given, is filled in for the access log (request id, token
    fetched or replayed, upstream time, bytes both ways). ``budget`` bounds the
    replay bodies buffered by all routes together. (A plain function that returns
    the exchange's coroutine: the checks raise at once, and a request costs one
    coroutine here, not two.)
    """
    config = route.config
    length = request.content_length
    if length is not None and length > config.max_body:
        raise BodyTooLarge(f"the request body is larger than {config.max_body} bytes")
    if request.upgrade is not None:
        _check_upgrade(request)
    target = join_upstream(route.base_path, match.rest, match.query)
    if ex is None:
        ex = Exchange(request.request_id or "")
    return _exchange(request, route, target, ex, budget)


async def _token(manager: TokenManager, ex: Exchange) -> Token:
    """The route's token; ``ex.token_fetched`` when this request waited for a fetch."""
    cached = manager.token
    token = await manager.get()
    if token is not cached:
        ex.token_fetched = True
    return token


async def _exchange(
    request: Request, route: RouteRuntime, target: str, ex: Exchange, budget: ReplayBudget | None
) -> None:
    """Read or stream the body, authenticate, send, replay once on a 401, answer."""
    clock = Clock.of(request)
    body = Body()
    try:
        if request.chunked or request.content_length:
            await body.read(request, route, clock, budget)
        data, streamed = body.data, body.streamed
        how, framing_line = request_framing(
            request.content_length, request.chunked, len(data) if isinstance(data, bytes) else None
        )
        token: Token | None = None
        auth_line = route.static_line
        manager = route.manager
        if manager is not None:
            cached = manager.token  # inline (not _token): a coroutine per request costs
            token = await manager.get()
            if token is not cached:
                ex.token_fetched = True
            auth_line = route.auth_for(token, request.method, target)
        head = request_head(request, route, target, ex.request_id, auth_line, framing_line)
        if streamed is None:
            clock.arm(route.config.timeout, HEAD)
        else:
            clock.arm(route.config.read_timeout, READ)
        resp = await _send(request, route, head, data, streamed, how, ex)
        clock.stop()
        if resp.status == 401 and token is not None and route.config.retry_on_401:
            resp = await _replay_401(
                request, route, token, resp, body, ex, target, framing_line, clock
            )
        ex.bytes_in = body.sent
        if not _answer_start(request, route, resp, ex):
            await _stream_rest(request, route, resp, ex, clock)
    except asyncio.CancelledError:
        if not request.expired():
            raise  # cancelled by someone else (shutdown): not ours to swallow
        _expired(request, route, clock)
    finally:
        clock.stop()
        if body.reserved and budget is not None:
            budget.give(body.reserved)


def _expired(request: Request, route: RouteRuntime, clock: Clock) -> None:
    """The exchange's deadline passed: the timeout's answer, or a cut once started."""
    if request.started:
        why = f"no progress for {route.config.read_timeout:g}s (read_timeout)"
        _cut(request, route, why)
        return
    raise _timed_out(route, clock) from None


def _check_upgrade(request: Request) -> None:
    """authproxy never switches protocols. Upgrade is ignored (RFC 9110 7.8) where the
    request can be served without it; refused where it cannot: a WebSocket, or a body
    that llhttp, having stopped at the Upgrade, did not read."""
    upgrade = request.upgrade
    assert upgrade is not None
    if b"websocket" in upgrade.lower():
        raise UpgradeNotSupported("authproxy does not switch protocols (WebSocket)")
    if request.stopped and (request.chunked or request.content_length):
        raise UpgradeNotSupported(
            "a request with a body cannot ask to Upgrade here; send it without Upgrade "
            "(curl: --http1.1)"
        )


def _timed_out(route: RouteRuntime, clock: Clock) -> ProxyError:
    config = route.config
    if clock.phase == BODY:
        return RequestTimeout(
            f"the request body stopped arriving for {config.body_timeout:g}s", route=route.name
        )
    if clock.phase == READ:
        return UpstreamTimeout(
            f"the upstream made no progress for {config.read_timeout:g}s", route=route.name
        )
    return UpstreamTimeout(f"upstream did not answer within {config.timeout:g}s", route=route.name)


async def _replay_401(
    request: Request,
    route: RouteRuntime,
    token: Token,
    resp: Response,
    sent: Body,
    ex: Exchange,
    target: str,
    framing_line: bytes,
    clock: Clock,
) -> Response:
    """The upstream refused ``token``: drop it, and replay once if the body allows."""
    manager = route.manager
    assert manager is not None
    body, streamed = sent.data, sent.streamed
    if streamed is None and route.dpop_challenge(target, resp.headers):
        # RFC 9449 9: the resource server wants a nonce; the same token, a new proof.
        await _discard(resp)
        auth = route.auth_for(token, request.method, target)
        head = request_head(request, route, target, ex.request_id, auth, framing_line)
        clock.arm(route.config.timeout, HEAD)
        resp = await _send(request, route, head, body, None, LENGTH, ex)
        clock.stop()
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
        fresh = await _token(manager, ex)
    except ProxyError:
        route.count_retry("failed")
        raise
    auth = route.auth_for(fresh, request.method, target)
    head = request_head(request, route, target, ex.request_id, auth, framing_line)
    clock.arm(route.config.timeout, HEAD)
    again = await _send(request, route, head, body, None, LENGTH, ex)
    clock.stop()
    manager.replayed(fresh, again.status)
    route.count_retry("failed" if again.status == 401 else "replayed")
    ex.replayed = True
    return again


async def _send(
    request: Request,
    route: RouteRuntime,
    head: bytes,
    body: bytes | AsyncIterator[bytes] | None,
    streamed: StreamedBody | None,
    how: int,
    ex: Exchange,
) -> Response:
    started = time.perf_counter()
    try:
        if streamed is None:
            resp = await route.pool.request(
                request.method, head, body, how=how, interim=request.interim
            )
        else:
            resp = await route.pool.request(
                request.method,
                head,
                body,
                how=how,
                interim=request.interim,
                on_early=request.interrupt,
            )
    except Http1Error as exc:
        raise _send_failed(exc, route, streamed) from exc
    elapsed = time.perf_counter() - started
    route.m_upstream.observe(elapsed)
    ex.upstream_s += elapsed
    return resp


def _send_failed(exc: Http1Error, route: RouteRuntime, streamed: StreamedBody | None) -> ProxyError:
    """The error to answer for a failed send."""
    if streamed is not None:
        if streamed.too_large:
            return BodyTooLarge(
                f"the request body is larger than {streamed.limit} bytes", route=route.name
            )
        if streamed.client_error is not None:
            err = client_refusal(streamed.client_error)
            err.route = route.name
            return err
    return upstream_error(exc, route.name)


def _cut(request: Request, route: RouteRuntime, why: str) -> None:
    """Headers are gone already: the only honest signal left is to cut the
    connection, so the client sees a truncated answer, never a complete one."""
    route.log_throttle.log(
        log, logging.WARNING, ("stream_aborted",), "stream aborted mid-answer: %s", why,
        extra={"route": route.name},
    )  # fmt: skip
    transport = request.transport
    if transport is not None:
        transport.abort()


def _answer_start(request: Request, route: RouteRuntime, resp: Response, ex: Exchange) -> bool:
    """Write the answer's head; True when that was all of the answer (or the client is
    gone), False when the rest of the body is to be streamed (:func:`_stream_rest`)."""
    lines, length = response_lines(resp)
    # Answered before the client's body was all here: the rest of it is not wanted,
    # and the connection ends after this answer (with a lingering close).
    close = resp.early and not request.body_complete
    try:
        if request.method == "HEAD":
            request.start_lines(
                resp.status, resp.reason, lines, length=length, end=True, close=close
            )
        else:
            # What of the body is here already goes out in the same write as the headers
            # (one syscall fewer), all of it when it is all here. Otherwise the headers
            # go first, so a client of a slow or streaming answer sees them at once.
            first, end = resp.read_ready()
            ex.bytes_out += len(first)
            request.start_lines(
                resp.status, resp.reason, lines, length=length, body=first, end=end, close=close
            )
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
    request: Request, route: RouteRuntime, resp: Response, ex: Exchange, clock: Clock
) -> None:
    """The rest of the answer's body, as it comes (flow control both ways), with
    ``read_timeout`` re-armed for each chunk."""
    delay = route.config.read_timeout
    try:
        while True:
            clock.arm(delay, READ)
            chunk = await resp.read()
            if not chunk:
                break
            ex.bytes_out += len(chunk)
            await request.write(chunk)
        request.end()
    except Http1Error as exc:
        resp.close()
        if request.started:
            _cut(request, route, str(exc))
            return
        raise upstream_error(exc, route.name) from exc
    except ConnectionError:
        # The client went away: nothing to tell it; free the upstream connection.
        resp.close()
        return
    except BaseException:
        resp.close()
        raise
    resp.release()


__all__ = ["forward"]
