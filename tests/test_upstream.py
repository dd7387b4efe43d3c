"""The hot-path upstream client against raw upstreams that misbehave in HTTP's corners."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from proxy import config as c
from proxy.http1 import Http1Error as UpstreamError
from proxy.http1 import Pool as UpstreamPool
from proxy.http1.errors import ConnectError
from tests.conftest import ProxyFactory

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def raw_server(handler: Handler) -> tuple[asyncio.Server, int, list[bytes]]:
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def read_head() -> bytes:
            head = await reader.readuntil(b"\r\n\r\n")
            heads.append(head)
            return head

        reader.read_head = read_head  # type: ignore[attr-defined]
        await serve(reader, writer)

    server = await asyncio.start_server(recording, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], heads


async def test_close_delimited_body_ends_at_eof() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read_head()  # type: ignore[attr-defined]
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    server, port, _ = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", port, ssl_context=None, connect_timeout=1)
    resp = await pool.request("GET", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None)
    assert await resp.read_all(1000) == b"all of it"
    resp.release()
    pool.close()
    server.close()


async def test_short_body_is_an_error_not_a_complete_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read_head()  # type: ignore[attr-defined]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    server, port, _ = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", port, ssl_context=None, connect_timeout=1)
    resp = await pool.request("GET", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None)
    with pytest.raises(UpstreamError):
        await resp.read_all(1000)
    resp.close()
    pool.close()
    server.close()


async def test_keep_alive_reuse_and_head_answers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.read_head()  # type: ignore[attr-defined]
            body = b"" if head.startswith(b"HEAD") else b"hello"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
            await writer.drain()

    server, port, heads = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", port, ssl_context=None, connect_timeout=1)
    for _ in range(3):
        resp = await pool.request("GET", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None)
        assert await resp.read_all(100) == b"hello"
        resp.release()
    assert len(pool._all) == 1  # one connection served all three
    resp = await pool.request("HEAD", b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", None)
    assert resp.status == 200
    assert await resp.read_all(100) == b""
    resp.release()
    resp = await pool.request("GET", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None)
    assert await resp.read_all(100) == b"hello"
    resp.release()
    assert len(heads) == 5
    pool.close()
    server.close()


@pytest.mark.parametrize(("method", "sent_times"), [("GET", 2), ("POST", 1)])
async def test_a_stale_pooled_connection_retries_only_idempotent_requests(
    method: str, sent_times: int
) -> None:
    """The upstream reads a request on a reused connection, then drops it unanswered."""
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.read_head()  # type: ignore[attr-defined]
        served += 1
        if served == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await reader.read_head()  # type: ignore[attr-defined]
            return  # second request on this connection: hang up without answering
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server, port, heads = await raw_server(handler)
    pool = UpstreamPool("127.0.0.1", port, ssl_context=None, connect_timeout=1)
    resp = await pool.request("GET", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None)
    await resp.read_all(10)
    resp.release()
    head = f"{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    if sent_times == 2:
        resp = await pool.request(method, head, b"")
        assert await resp.read_all(10) == b"ok"
        resp.release()
    else:
        with pytest.raises(UpstreamError):
            await pool.request(method, head, b"")
    assert sum(1 for h in heads[1:] if h.startswith(method.encode())) == sent_times
    pool.close()
    server.close()


async def test_refused_connection_is_a_connect_error() -> None:
    server, port, _ = await raw_server(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    pool = UpstreamPool("127.0.0.1", port, ssl_context=None, connect_timeout=1)
    with pytest.raises(UpstreamError) as info:
        await pool.request("GET", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", None)
    assert isinstance(info.value, ConnectError)


def test_static_values_that_could_split_a_header_are_config_errors() -> None:
    with pytest.raises(c.ConfigError) as info:
        c.parse(
            "routes:\n  a:\n    upstream: http://x/\n"
            '    auth: {type: static, header: X-Key, value: "${env:V}"}\n',
            {"V": "abc\r\nX-Evil: 1"},
        )
    [problem] = info.value.problems
    assert problem.path == "routes.a.auth.value"
    assert "X-Evil" not in problem.message
    with pytest.raises(c.ConfigError) as info:
        c.parse("routes:\n  a:\n    upstream: http://x/\n    auth: {type: none}\n"
                "    inject: {header: 'Bad Header'}\n")  # fmt: skip
    assert info.value.problems[0].path == "routes.a.inject.header"


async def test_a_provider_token_with_a_line_break_is_refused(
    echo, start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    from aiohttp import web

    from tests.conftest import serve_app

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "abc\r\nX-Injected: yes", "expires_in": 60})

    app = web.Application()
    app.router.add_post("/token", token)
    runner, port = await serve_app(app)
    try:
        proxy = await start_proxy(
            f"""
routes:
  api:
    upstream: {echo.url}/
    auth:
      type: oauth2_client_credentials
      token_url: http://127.0.0.1:{port}/token
      client_id: id
      client_secret: secret
"""
        )
        async with http.get(proxy.url + "/api/x") as r:
            assert r.status == 502
            assert r.headers["X-Authproxy-Error"] == "token_unavailable"
            assert b"X-Injected" not in await r.read()
        assert echo.seen == []
    finally:
        await runner.cleanup()
