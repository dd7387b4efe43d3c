"""The client's request body on its way upstream: streamed with its bound and timeouts,
or read up to a size (for a 401 replay)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.errors import BodyTooLarge
from proxy.http1.errors import Http1Error
from proxy.http1.request import Request
from proxy.proxying.deadline import BODY, HEAD, READ, Clock
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


__all__ = ["StreamedBody", "read_up_to"]
