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
from collections.abc import AsyncIterator

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
from proxy.proxying.request_body import StreamedBody, read_up_to
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


async def forward(
    request: Request,
    route: RouteRuntime,
    match: Match[RouteRuntime],
    ex: Exchange | None = None,
    budget: ReplayBudget | None = None,
) -> None:
    """Send ``request`` upstream through ``route`` and stream the answer back.

    ``ex``, when given, is filled in for the access log (request id, token
    fetched or replayed, upstream time, bytes both ways). ``budget`` bounds the
    replay bodies buffered by all routes together.
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
    clock = Clock.of(request)
    body = _Body()
    try:
        if request.chunked or length:
            await body.read(request, route, clock, budget)
        await _exchange(request, route, target, body, ex, clock)
    except asyncio.CancelledError:
        if not request.expired():
            raise  # cancelled by someone else (shutdown): not ours to swallow
        if request.started:
            why = f"no progress for {config.read_timeout:g}s (read_timeout)"
            _cut(request, route, why)
            return
        raise _timed_out(route, clock) from None
    finally:
        clock.stop()
        if body.reserved and budget is not None:
            budget.give(body.reserved)


class _Body:
    """The request body: buffered when a 401 replay may need it, streamed otherwise."""

    __slots__ = ("data", "streamed", "reserved")

    def __init__(self) -> None:
        self.data: bytes | AsyncIterator[bytes] | None = None
        self.streamed: StreamedBody | None = None
        #: bytes of the replay budget this body holds
        self.reserved = 0

    async def read(
        self, request: Request, route: RouteRuntime, clock: Clock, budget: ReplayBudget | None
    ) -> None:
        config = route.config
        length = request.content_length
        limit = config.max_replay_body
        may_replay = route.manager is not None and config.retry_on_401
        if may_replay and budget is not None:
            want = limit if length is None else length
            if want <= limit:
                self.reserved = budget.take(want)
                may_replay = self.reserved > 0
        try:
            if may_replay and length is not None and length <= limit:
                self.data = await read_up_to(request, length, clock, config.body_timeout)
            elif may_replay and length is None:
                head = await read_up_to(request, limit, clock, config.body_timeout)
                if len(head) > config.max_body:
                    raise BodyTooLarge(f"the request body is larger than {config.max_body} bytes")
                if request.at_eof():
                    self.data = head
                else:
                    self.streamed = StreamedBody(request, head, config.max_body, clock, route)
            else:
                self.streamed = StreamedBody(request, b"", config.max_body, clock, route)
        except Http1Error as exc:
            raise client_refusal(exc) from exc
        clock.stop()
        if self.streamed is not None:
            self.data = self.streamed.chunks()

    @property
    def sent(self) -> int:
        """Bytes of the body sent upstream (so far, when streamed)."""
        if isinstance(self.data, bytes):
            return len(self.data)
        return self.streamed.total if self.streamed is not None else 0


async def _token(manager: TokenManager, ex: Exchange) -> Token:
    """The route's token; ``ex.token_fetched`` when this request waited for a fetch."""
    cached = manager.token
    token = await manager.get()
    if token is not cached:
        ex.token_fetched = True
    return token


async def _exchange(
    request: Request, route: RouteRuntime, target: str, body: _Body, ex: Exchange, clock: Clock
) -> None:
    """Authenticate, send, replay once on a 401, and pass the answer on."""
    data, streamed = body.data, body.streamed
    how, framing_line = request_framing(
        request.content_length, request.chunked, len(data) if isinstance(data, bytes) else None
    )
    token: Token | None = None
    auth_line = route.static_line
    manager = route.manager
    if manager is not None:
        token = await _token(manager, ex)
        auth_line = route.auth_for(token, request.method, target)
    head = request_head(request, route, target, ex.request_id, auth_line, framing_line)
    if streamed is None:
        clock.arm(route.config.timeout, HEAD)
    else:
        clock.arm(route.config.read_timeout, READ)
    resp = await _send(request, route, head, data, streamed, how, ex)
    clock.stop()
    if resp.status == 401 and token is not None and route.config.retry_on_401:
        resp = await _replay_401(request, route, token, resp, body, ex, target, framing_line, clock)
    ex.bytes_in = body.sent
    if not _answer_start(request, route, resp, ex):
        await _stream_rest(request, route, resp, ex, clock)


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
    sent: _Body,
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
