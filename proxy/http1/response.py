"""An upstream's answer as the forwarder sees it: status, fields, and a body stream."""

from __future__ import annotations

from typing import Protocol

from proxy.http1.errors import TooLarge


class Source(Protocol):
    """What an answer reads its body from: the connection it came on
    (:class:`proxy.http1.client.Connection`)."""

    #: the answer came before all of the request body was sent
    early: bool

    async def read_chunk(self) -> bytes: ...

    def read_ready(self) -> tuple[bytes, bool]: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


class Response:
    """Status and headers of an answer, and its body as a stream of chunks."""

    __slots__ = ("status", "reason", "lines", "content_length", "connection", "_conn", "_done")

    def __init__(
        self,
        conn: Source,
        status: int,
        reason: str,
        lines: list[bytes],
        content_length: bytes | None,
        connection: list[bytes] | None,
    ) -> None:
        self.status = status
        self.reason = reason
        #: the fields but the hop-by-hop ones (RFC 9110 7.6.1), in order, duplicates
        #: kept, as the pieces of their lines: name, b": ", value, b"\r\n", name, ...
        self.lines = lines
        #: the (last) Content-Length value as sent, if any
        self.content_length = content_length
        #: the values of the Connection fields, if any
        self.connection = connection
        self._conn = conn
        self._done = False

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The fields but the hop-by-hop ones, as (name, value) pairs."""
        lines = self.lines
        return list(zip(lines[0::4], lines[2::4], strict=True))

    @property
    def early(self) -> bool:
        """The answer came before all of the request body was sent."""
        return self._conn.early

    async def read(self) -> bytes:
        """The next chunk of the body, or b'' at its end. Raises Http1Error if cut."""
        return await self._conn.read_chunk()

    def read_ready(self) -> tuple[bytes, bool]:
        """What of the body has arrived and was not read yet, without waiting (all of it
        when that is little), and whether that was the rest of the body."""
        return self._conn.read_ready()

    async def read_all(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await self.read()
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if size > limit:
                raise TooLarge("answer larger than expected")
            parts.append(chunk)

    def release(self) -> None:
        """Done with the answer: reuse the connection if the answer was complete."""
        if not self._done:
            self._done = True
            self._conn.finish()

    def close(self) -> None:
        """Done, and the connection must not be reused (answer not read to the end)."""
        if not self._done:
            self._done = True
            self._conn.abort()


__all__ = ["Response", "Source"]
