"""The client's request body on its way upstream: streamed with its bound and timeouts,
or read up to a size (for a 401 replay); :class:`Body` decides which."""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.errors import BodyTooLarge
from proxy.http1.errors import Http1Error
from proxy.http1.request import Request
from proxy.http_errors import client_refusal
from proxy.proxying.deadline import BODY, HEAD, READ, Clock
from proxy.proxying.replay import ReplayBudget
from proxy.proxying.runtime import RouteRuntime


class StreamedBody:
    """A request body streamed upstream, counted against ``max_body``."""

    def __init__(
        self, content: Request, prefix: bytes, limit: int, clock: Clock, route: RouteRuntime
    ) -> None:
        self.content = content
        self.prefix = prefix
        self.limit = limit
        self.clock = clock
        self.too_large = False
        self.client_error: Http1Error | None = None
        self.total = 0
        config = route.config
        self.body_timeout = config.body_timeout
        self.read_timeout = config.read_timeout
        self.head_timeout = config.timeout

    async def chunks(self) -> AsyncIterator[bytes]:
        clock = self.clock
        total = self.total = len(self.prefix)
        if self.prefix:
            yield self.prefix
        while True:
            clock.arm(self.body_timeout, BODY)
            try:
                chunk = await self.content.readany()
            except Http1Error as exc:
                self.client_error = exc
                raise
            if not chunk:
                clock.arm(self.head_timeout, HEAD)
                return
            total += len(chunk)
            self.total = total
            if total > self.limit:
                self.too_large = True
                raise BodyTooLarge(f"the request body is larger than {self.limit} bytes")
            clock.arm(self.read_timeout, READ)
            yield chunk


async def read_up_to(content: Request, limit: int, clock: Clock, delay: float) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        clock.arm(delay, BODY)
        chunk = await content.readany()
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


class Body:
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


__all__ = ["Body", "StreamedBody", "read_up_to"]
