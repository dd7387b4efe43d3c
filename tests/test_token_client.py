"""The token endpoints' HTTP client (proxy/tokens/flows/client.py), byte for byte.

A raw TCP server stands in for a token endpoint, so that the test sees exactly
what authproxy sent and can answer what no well-behaved framework would: a
compressed answer nobody asked for, an answer cut short, a redirect.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.tokens.flows.client import USER_AGENT, TokenClient
from proxy.tokens.flows.http import request_json
from proxy.tokens.manager import TokenFetchError
from tests.waiting import until


@dataclass
class RawEndpoint:
    """Answers each connection with ``answer`` (bytes), after reading one request."""

    port: int = 0
    answer: bytes = b""
    received: list[bytes] = field(default_factory=list)
    #: the connection was closed by the client after the answer (Connection: close)
    closed_by_client: list[bool] = field(default_factory=list)
    #: close the connection right after the answer, as a server that crashed would
    hang_up: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth/token?v=2"


def http_answer(status: int, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
async def raw() -> AsyncIterator[RawEndpoint]:
    state = RawEndpoint()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        state.received.append(head + await reader.readexactly(length))
        writer.write(state.answer)
        await writer.drain()
        if state.hang_up:
            writer.close()
            return
        # The client closes first when it sent Connection: close and read the answer.
        try:
            state.closed_by_client.append(await reader.read() == b"")
        except ConnectionError:
            state.closed_by_client.append(True)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()


async def fetch(client: TokenClient, url: str, **kw: Any) -> dict[str, Any]:
    return await request_json(client, "POST", url, **kw)


async def test_form_request_bytes(raw: RawEndpoint, token_client: TokenClient) -> None:
    raw.answer = http_answer(200, b'{"access_token": "AT"}', "Content-Type: application/json")
    data = await fetch(
        token_client,
        raw.url,
        headers={"Authorization": "Basic abc"},
        form={"grant_type": "client_credentials", "scope": "a b"},
    )
    assert data == {"access_token": "AT"}
    [sent] = raw.received
    assert sent == (
        b"POST /oauth/token?v=2 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"Accept: application/json\r\n"
        b"Authorization: Basic abc\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"User-Agent: %s\r\n"
        b"Content-Length: 39\r\n"
        b"Connection: close\r\n\r\n"
        b"grant_type=client_credentials&scope=a+b"
    ) % (raw.port, USER_AGENT.encode())
    await until(lambda: raw.closed_by_client, "the client closing its connection")
    assert raw.closed_by_client == [True]


async def test_json_request_keeps_a_configured_content_type(
    raw: RawEndpoint, token_client: TokenClient
) -> None:
    raw.answer = http_answer(200, b'{"token": "T"}')
    await fetch(
        token_client,
        raw.url,
        headers={"Content-Type": "application/vnd.api+json", "X-Api-Key": "k"},
        json_body={"key": "k", "n": 1},
    )
    [sent] = raw.received
    head, body = sent.split(b"\r\n\r\n")
    assert json.loads(body) == {"key": "k", "n": 1}
    assert head.count(b"Content-Type:") == 1
    assert b"Content-Type: application/vnd.api+json" in head and b"X-Api-Key: k" in head


@pytest.mark.parametrize(
    "encode",
    [gzip.compress, zlib.compress, lambda b: zlib.compress(b)[2:-4]],
    ids=["gzip", "deflate-zlib", "deflate-raw"],
)
async def test_compressed_answer_is_inflated(
    encode: Callable[[bytes], bytes], raw: RawEndpoint, token_client: TokenClient
) -> None:
    coding = "gzip" if encode is gzip.compress else "deflate"
    raw.answer = http_answer(200, encode(b'{"access_token": "Z"}'), f"Content-Encoding: {coding}")
    assert await fetch(token_client, raw.url, form={}) == {"access_token": "Z"}


async def test_compressed_bomb_is_refused(raw: RawEndpoint, token_client: TokenClient) -> None:
    raw.answer = http_answer(200, gzip.compress(b" " * (3 << 20)), "Content-Encoding: gzip")
    with pytest.raises(TokenFetchError) as info:
        await fetch(token_client, raw.url, form={})
    assert info.value.message == "token endpoint answered 200 with more than 1024 KiB; refused"


@pytest.mark.parametrize(
    ("answer", "message", "retryable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"access", "answer was cut short", True),
        (b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
         "answered 302", False),
        (b"NOT HTTP AT ALL\r\n\r\n", "sent an invalid answer (malformed answer)", True),
        (b"", "answer was cut short", True),
    ],
    ids=["cut", "redirect-not-followed", "garbage", "closed"],
)  # fmt: skip
async def test_broken_answers(
    answer: bytes, message: str, retryable: bool, raw: RawEndpoint, token_client: TokenClient
) -> None:
    raw.answer, raw.hang_up = answer, True
    with pytest.raises(TokenFetchError) as info:
        await fetch(token_client, raw.url, form={})
    assert info.value.message == f"token endpoint {message}"
    assert info.value.retryable is retryable
    assert len(raw.received) == 1  # never sent twice, never to the Location


async def test_refused_connection_and_timeout(token_client: TokenClient) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(TokenFetchError) as info:
        await fetch(token_client, f"http://127.0.0.1:{port}/t", form={})
    assert info.value.message == "token endpoint unreachable (connection refused)"

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    slow = TokenClient(ssl_context=None, timeout=0.2, connect_timeout=0.2)
    try:
        with pytest.raises(TokenFetchError) as info:
            await fetch(slow, f"http://127.0.0.1:{port}/t", form={})
        assert info.value.message == "token endpoint did not answer in time"
        assert info.value.retryable
    finally:
        server.close()
        await server.wait_closed()


async def test_header_with_a_line_break_is_refused_before_sending(
    raw: RawEndpoint, token_client: TokenClient
) -> None:
    with pytest.raises(TokenFetchError) as info:
        await fetch(token_client, raw.url, headers={"X-Key": "a\r\nInjected: 1"}, form={})
    assert "line break" in info.value.message and not info.value.retryable
    assert raw.received == []


def test_serving_never_imports_aiohttp() -> None:
    """aiohttp was a third of an idle proxy's memory; the serve path must not load it."""
    code = (
        "import sys, proxy.cli.main, proxy.app, proxy.tokens.stores.file, proxy.ops.reload;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
