"""Raw HTTP/1.1 over a socket, for requests an HTTP client library would refuse to send.

Used by the hardening tests (limits, faults, fuzzing) to send malformed or
oversized requests and to see exactly what came back, truncation included.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lowercase names; last one wins
    body: bytes
    complete: bool  # the body is as long as its framing said
    rest: bytes = b""  # whatever followed this answer on the connection

    @property
    def error_code(self) -> str | None:
        return self.headers.get("x-authproxy-error")

    def json(self) -> Any:
        return json.loads(self.body)


def parse(raw: bytes) -> Answer:
    """The first HTTP answer in ``raw``; raises ValueError when there is none."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no complete HTTP header block in {raw[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        return Answer(status, headers, rest[:n], len(rest) >= n, rest[n:])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, complete, after = _dechunk(rest)
        return Answer(status, headers, body, complete, after)
    return Answer(status, headers, rest, True)


def _dechunk(data: bytes) -> tuple[bytes, bool, bytes]:
    out = bytearray()
    while True:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            return bytes(out), False, b""
        size = int(line.split(b";")[0], 16)
        if size == 0:
            trailer_end = data.find(b"\r\n")
            return bytes(out), trailer_end >= 0, data[trailer_end + 2 :]
        if len(data) < size + 2:
            out += data[:size]
            return bytes(out), False, b""
        out += data[:size]
        data = data[size + 2 :]


async def exchange(
    host: str,
    port: int,
    request: bytes,
    *,
    timeout: float = 10.0,
    half_close: bool = False,
    first_answer: bool = False,
) -> bytes:
    """Send ``request`` on a new connection and read until the server closes it
    (or, with ``first_answer``, until one complete answer has arrived)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        if half_close and writer.can_write_eof():
            writer.write_eof()
        chunks = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                if first_answer and _complete(b"".join(chunks)):
                    break
        return b"".join(chunks)
    finally:
        writer.close()


def _complete(raw: bytes) -> bool:
    try:
        return parse(raw).complete
    except ValueError:
        return False


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port.rstrip("/"))
