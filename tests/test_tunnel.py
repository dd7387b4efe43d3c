"""The CONNECT handshake against proxies that misbehave, on raw sockets.

A real proxy (tinyproxy, tests/test_egress.py) behaves; these do not: they answer
garbage, an endless head, data before the tunnel is used, nothing at all, or close.
Each is a clear error naming the proxy (a 502, or a 504 for silence past
``connect_timeout``), never a hang or a traceback, and the request the client
sent reaches nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme

from proxy.http1 import Http1Error as UpstreamError
from proxy.http1 import Pool as UpstreamPool
from proxy.http1.egress import ProxyURL
from proxy.http1.errors import ConnectError, Timeout
from proxy.http1.tunnel import Tunnel
from tests.forward_proxy import forward_proxy_fixture  # noqa: F401

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_proxy() -> AsyncIterator[Callable[[Behaviour], Awaitable[tuple[int, list[bytes]]]]]:
    servers: list[asyncio.Server] = []

    async def make(behaviour: Behaviour) -> tuple[int, list[bytes]]:
        heads: list[bytes] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                await behaviour(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1], heads

    yield make
    for server in servers:
        server.close()
        await server.wait_closed()


def pool_via(port: int, *, timeout: float = 2.0, user: str | None = None) -> UpstreamPool:
    tunnel = Tunnel(ProxyURL("127.0.0.1", port, user, "pw-Secret-1" if user else None))
    return UpstreamPool(
        "origin.example", 8080, ssl_context=None, connect_timeout=timeout, opener=tunnel
    )


async def fails_with(pool: UpstreamPool) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await pool.request("GET", b"GET / HTTP/1.1\r\nHost: origin.example\r\n\r\n", None)
    pool.close()
    return info.value


async def test_connect_request_is_what_a_proxy_expects(raw_proxy):
    async def answer(reader, writer):
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        request = await reader.readuntil(b"\r\n\r\n")
        assert request == b"GET / HTTP/1.1\r\nHost: origin.example\r\n\r\n"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    port, heads = await raw_proxy(answer)
    pool = pool_via(port, user="alice")
    resp = await pool.request("GET", b"GET / HTTP/1.1\r\nHost: origin.example\r\n\r\n", None)
    assert resp.status == 200 and await resp.read_all(100) == b"ok"
    resp.release()
    pool.close()
    lines = heads[0].decode().split("\r\n")
    assert lines[0] == "CONNECT origin.example:8080 HTTP/1.1"
    assert "Host: origin.example:8080" in lines
    assert "Proxy-Authorization: Basic YWxpY2U6cHctU2VjcmV0LTE=" in lines  # alice:pw-Secret-1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"SMTP ready\r\n\r\n", "sent a malformed answer to CONNECT"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 20000, "answer head over 16 KiB"),
        (b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0-x\r\n", "sent data before the tunnel was used"),
        (b"HTTP/1.1 407 Proxy Auth\x01Required\r\n\r\n", "refused CONNECT to origin.example:8080"
         ": 407 Proxy Auth Required"),
        (b"HTTP/1.1 200", "closed the connection before answering CONNECT"),
    ],
    ids=["garbage", "endless-head", "early-data", "control-chars", "closed"],
)  # fmt: skip
async def test_misbehaving_proxy_is_a_clear_connect_error(raw_proxy, reply, expected):
    async def answer(reader, writer):
        writer.write(reply)
        await writer.drain()

    port, _ = await raw_proxy(answer)
    err = await fails_with(pool_via(port, user="alice"))
    assert isinstance(err, ConnectError) and not isinstance(err, Timeout)
    assert f"egress proxy 127.0.0.1:{port}" in str(err) and expected in str(err)
    assert "pw-Secret-1" not in str(err) and "alice" not in str(err)


async def test_silent_proxy_times_out_at_connect_timeout_naming_it(raw_proxy):
    async def silent(reader, writer):
        await reader.read()

    port, _ = await raw_proxy(silent)
    started = time.monotonic()
    err = await fails_with(pool_via(port, timeout=0.3))
    assert time.monotonic() - started < 2.0
    assert isinstance(err, Timeout) and isinstance(err, ConnectError)
    assert str(err) == (
        f"connecting to the upstream through egress proxy 127.0.0.1:{port} took longer than 0.3s"
    )


def test_tunnel_with_tls_inside_on_uvloop(forward_proxy, tmp_path):
    """`authproxy serve` runs on uvloop: its transports take set_protocol and
    start_tls as asyncio's do (a sync test: uvloop.run makes its own loop)."""
    uvloop = pytest.importorskip("uvloop")
    fp = forward_proxy(user="alice", password="pw-Secret-1")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    seen: list[bytes] = []
    handlers: list[asyncio.Future[None]] = []

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done = asyncio.get_running_loop().create_future()
        handlers.append(done)
        try:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        finally:
            # TLS closes with an exchange (close_notify, then the peer's EOF through
            # tinyproxy): the loop must not close under it (uvloop: "resource busy").
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            done.set_result(None)

    async def scenario() -> tuple[int, bytes]:
        server = await asyncio.start_server(origin, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        tunnel = Tunnel(ProxyURL("127.0.0.1", fp.port, "alice", "pw-Secret-1"))
        pool = UpstreamPool(
            "localhost", port, ssl_context=client_ctx, connect_timeout=5, opener=tunnel
        )
        try:
            resp = await pool.request("GET", b"GET /v1 HTTP/1.1\r\nHost: localhost\r\n\r\n", None)
            body = await resp.read_all(100)
            resp.close()
            return resp.status, body
        finally:
            pool.close()
            server.close()
            await server.wait_closed()  # (before 3.12 not its connections)
            await asyncio.wait_for(asyncio.gather(*handlers), 20)

    assert uvloop.run(scenario()) == (200, b"ok")
    assert seen == [b"GET /v1 HTTP/1.1\r\nHost: localhost\r\n\r\n"]
    assert len(fp.connects()) == 1
