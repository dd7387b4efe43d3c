"""The client side of the referee: h11 parses what the proxy answers.

:func:`read_answers` reads one answer per request a raw-socket client pipelined, so the
tests assert on what h11 saw, never on what our own parser saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import h11

from tests.referee import MAX_EVENT, Fields


@dataclass
class Answer:
    """One answer as h11 parsed it at the client."""

    interim: list[int] = field(default_factory=list)
    status: int = 0
    headers: Fields = field(default_factory=list)  # names lowercased by h11
    body: bytes = b""
    trailers: Fields = field(default_factory=list)
    complete: bool = False
    http_version: bytes = b""

    def header(self, name: str) -> bytes | None:
        key = name.lower().encode()
        return next((v for n, v in self.headers if n == key), None)

    @property
    def error_code(self) -> str | None:
        v = self.header("x-authproxy-error")
        return v.decode() if v is not None else None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answers:
    """All a client read on one connection."""

    answers: list[Answer]
    closed: bool  # the proxy closed the connection
    timed_out: bool  # the deadline passed with an answer still missing
    error: str | None = None  # h11 could not parse what the proxy sent
    rest: bytes = b""  # bytes left over after the last answer


async def open_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def write_split(writer: asyncio.StreamWriter, data: bytes, cuts: Sequence[int]) -> None:
    """Write ``data`` in pieces cut at the given offsets, draining after each."""
    last = 0
    for cut in sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]:
        writer.write(data[last:cut])
        await writer.drain()
        last = cut


async def read_answers(
    reader: asyncio.StreamReader, methods: Sequence[str], *, timeout: float = 5.0
) -> Answers:
    """Read one answer per method in ``methods`` (the requests' methods, in order)."""
    buf = b""
    eof = False
    out: list[Answer] = []
    try:
        async with asyncio.timeout(timeout):
            for i, method in enumerate(methods):
                h = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_EVENT)
                h.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
                h.send(h11.EndOfMessage())
                if buf:
                    h.receive_data(buf)
                if eof:
                    h.receive_data(b"")
                ans = Answer()
                while True:
                    try:
                        event = h.next_event()
                    except h11.RemoteProtocolError as exc:
                        if ans.status:
                            out.append(ans)
                        return Answers(out, eof, False, str(exc), h.trailing_data[0])
                    if event is h11.NEED_DATA:
                        data = b""
                        with contextlib.suppress(ConnectionError):
                            data = await reader.read(65536)
                        eof = not data
                        h.receive_data(data)
                    elif isinstance(event, h11.InformationalResponse):
                        ans.interim.append(event.status_code)
                    elif isinstance(event, h11.Response):
                        ans.status = event.status_code
                        ans.headers = list(event.headers)
                        ans.http_version = event.http_version
                    elif isinstance(event, h11.Data):
                        ans.body += bytes(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        ans.trailers = list(event.headers)
                        ans.complete = True
                        out.append(ans)
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return Answers(out, True, False)
                buf = h.trailing_data[0]
                if h.their_state is h11.MUST_CLOSE or h.their_state is h11.CLOSED:
                    if i < len(methods) - 1:
                        return Answers(out, True, False, rest=buf)
    except TimeoutError:
        return Answers(out, eof, True, rest=buf)
    return Answers(out, eof, False, rest=buf)


async def exchange(
    port: int,
    data: bytes,
    methods: Sequence[str],
    *,
    cuts: Sequence[int] = (),
    timeout: float = 5.0,
) -> Answers:
    """Open a connection, write ``data`` (in pieces), read one answer per method, close."""
    reader, writer = await open_client(port)
    try:
        await write_split(writer, data, cuts)
        return await read_answers(reader, methods, timeout=timeout)
    finally:
        writer.transport.abort()


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Whether the peer closes the connection within ``timeout`` (bytes are drained)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    if not await reader.read(65536):
                        return True
                except ConnectionError:
                    return True
    except TimeoutError:
        return False


ROUTE = """
routes:
  svc:
    prefix: /svc/
    upstream: {url}/base/
    timeout: 5s
    auth: {{type: static, header: X-Api-Key, value: "k-123"}}
"""


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))
