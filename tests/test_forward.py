"""Forwarding through the real proxy to a real upstream: bytes, headers, errors."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from tests.conftest import Echo, ProxyFactory, json_of, serve_app


def static_route(upstream: str, extra: str = "") -> str:
    return f"""
routes:
  svc:
    prefix: /svc/
    upstream: {upstream}/base/
    auth: {{type: static, header: X-Api-Key, value: "${{env:KEY}}"}}
{extra}
"""


async def raw_request(url: str, data: bytes) -> bytes:
    """Send bytes as they are, and read the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return answer


async def test_method_path_query_and_body_bytes_arrive_unchanged(
    echo: Echo, start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(static_route(echo.url), env={"KEY": "k-123"})
    body = os.urandom(300_000)
    target = "/svc/items/a%20b/%E2%82%AC?q=%2F%3d&&x=1;y&empty="
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        async with http.request(
            method,
            URL(proxy.url + target, encoded=True),
            data=body,
            headers={"Content-Type": "app/x"},
        ) as r:
            assert r.status == 200
            answer = await json_of(r)
        assert answer["method"] == method
        assert echo.last.raw_path == "/base/items/a%20b/%E2%82%AC?q=%2F%3d&&x=1;y&empty="
        assert hashlib.sha256(echo.last.body).digest() == hashlib.sha256(body).digest()
        assert echo.last.header("content-length") == str(len(body))
        assert echo.last.header("content-type") == "app/x"


async def test_get_without_body_and_head(
    echo: Echo, start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(static_route(echo.url), env={"KEY": "k"})
    async with http.get(proxy.url + "/svc/") as r:
        assert r.status == 200
    assert echo.last.raw_path == "/base/"
    assert echo.last.body == b""
    async with http.get(proxy.url + "/svc") as r:
        assert r.status == 200
    assert echo.last.raw_path == "/base/"
    async with http.head(proxy.url + "/svc/x") as r:
        assert r.status == 200
        assert await r.read() == b""
    assert echo.last.method == "HEAD"


async def test_header_rules(
    echo: Echo, start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(static_route(echo.url), env={"KEY": "route-key"})
    headers = {
        "Authorization": "Bearer client-own",
        "X-Api-Key": "client-supplied",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "secret-hop",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic abc",
        "TE": "trailers",
        "Upgrade": "h2c",
        "X-Authproxy-Token": "never-forwarded",
        "X-Forwarded-For": "10.1.1.1",
        "X-Custom": "kept",
        "User-Agent": "legacy-app/1.0",
        "Host": "legacy.local",
    }
    async with http.get(proxy.url + "/svc/h", headers=headers) as r:
        assert r.status == 200
    seen = echo.last
    for dropped in (
        "authorization", "connection", "x-hop", "keep-alive", "proxy-authorization",
        "te", "upgrade", "x-authproxy-token",
    ):  # fmt: skip
        assert dropped not in seen.headers, dropped
    assert seen.headers["x-api-key"] == ["route-key"]
    assert seen.header("x-custom") == "kept"
    assert seen.header("user-agent") == "legacy-app/1.0"
    host, port = echo.url.removeprefix("http://").split(":")
    assert seen.header("host") == f"{host}:{port}"
    assert seen.header("x-forwarded-for") == "10.1.1.1, 127.0.0.1"
    assert seen.header("x-forwarded-proto") == "http"
    assert seen.header("x-forwarded-host") == "legacy.local"
    assert seen.header("x-request-id")
    # aiohttp adds nothing of its own.
    assert "accept-encoding" not in seen.headers
    assert "accept" not in seen.headers


async def test_client_request_id_is_kept(
    echo: Echo, start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(static_route(echo.url), env={"KEY": "k"})
    async with http.get(proxy.url + "/svc/", headers={"X-Request-Id": "abc-123"}) as r:
        assert r.status == 200
    assert echo.last.headers["x-request-id"] == ["abc-123"]


async def test_pass_client_authorization(
    echo: Echo, start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    cfg = f"""
routes:
  open:
    upstream: {echo.url}/
    auth: {{type: none}}
    pass_client_authorization: true
  closed:
    upstream: {echo.url}/
    auth: {{type: none}}
"""
    proxy = await start_proxy(cfg)
    async with http.get(proxy.url + "/open/", headers={"Authorization": "Bearer mine"}) as r:
        assert r.status == 200
    assert echo.last.header("authorization") == "Bearer mine"
    async with http.get(proxy.url + "/closed/", headers={"Authorization": "Bearer mine"}) as r:
        assert r.status == 200
    assert "authorization" not in echo.last.headers


async def test_response_headers_and_compressed_body_untouched(
    echo: Echo, start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    payload = gzip.compress(b'{"hello": "world"}' * 100)

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.Response(body=payload, status=201, reason="Made It")
        resp.headers["Content-Encoding"] = "gzip"
        resp.headers["Content-Type"] = "application/json"
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        resp.headers["Connection"] = "X-Up-Hop"
        resp.headers["X-Up-Hop"] = "dropped"
        resp.headers["X-Up"] = "kept"
        return resp

    echo.handler = handler
    proxy = await start_proxy(static_route(echo.url), env={"KEY": "k"})
    async with http.get(proxy.url + "/svc/z", headers={"Accept-Encoding": "gzip"}) as r:
        assert r.status == 201
        assert r.reason == "Made It"
        assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert r.headers["Content-Encoding"] == "gzip"
        assert r.headers["Content-Length"] == str(len(payload))
        assert r.headers["X-Up"] == "kept"
        assert "X-Up-Hop" not in r.headers
        assert await r.read() == payload


async def test_chunked_both_ways(
    echo: Echo, start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    parts = [os.urandom(10_000) for _ in range(50)]

    async def handler(request: web.Request) -> web.StreamResponse:
        got = await request.read()
        assert request.headers.get("Transfer-Encoding") == "chunked"
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(got), 7_777):
            await resp.write(got[i : i + 7_777])
        await resp.write_eof()
        return resp

    async def body() -> AsyncIterator[bytes]:
        for p in parts:
            yield p
            await asyncio.sleep(0)

    echo.handler = handler
    proxy = await start_proxy(static_route(echo.url), env={"KEY": "k"})
    async with http.post(proxy.url + "/svc/stream", data=body()) as r:
        assert r.status == 200
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert await r.read() == b"".join(parts)


async def test_errors_are_contract_json(
    echo: Echo, start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        static_route(echo.url, "    max_body: 1KiB\n"), env={"KEY": "secret-key-value"}
    )

    async def check(resp: aiohttp.ClientResponse, status: int, code: str) -> dict:
        assert resp.status == status
        assert resp.headers["X-Authproxy-Error"] == code
        assert resp.headers["Content-Type"].startswith("application/json")
        body = await resp.read()
        assert b"secret-key-value" not in body
        doc = json.loads(body)
        assert doc["error"]["code"] == code
        assert doc["error"]["message"]
        return doc

    async with http.get(proxy.url + "/nowhere") as r:
        await check(r, 404, "no_route")
    async with http.get(URL(proxy.url + "/svc/%2e%2e/etc/passwd?token=abc", encoded=True)) as r:
        doc = await check(r, 400, "bad_request")
        assert "abc" not in json.dumps(doc)
    async with http.post(proxy.url + "/svc/big", data=b"x" * 2048) as r:
        doc = await check(r, 413, "body_too_large")
        assert doc["error"]["route"] == "svc"
    assert echo.seen == []

    answer = await raw_request(
        proxy.url, b"GET http://example.com/svc/x HTTP/1.1\r\nHost: example.com\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"X-Authproxy-Error: bad_request" in answer
    answer = await raw_request(
        proxy.url, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 405")
    assert b"X-Authproxy-Error: method_not_allowed" in answer
    assert echo.seen == []


async def test_upstream_down_is_502_and_slow_is_504(
    start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/{t:.*}", slow)
    runner, port = await serve_app(app)
    # A port nobody listens on: bind, note it, close.
    probe, dead = await serve_app(web.Application())
    await probe.cleanup()
    cfg = f"""
routes:
  down:
    upstream: http://127.0.0.1:{dead}/
    auth: {{type: none}}
  slow:
    upstream: http://127.0.0.1:{port}/
    auth: {{type: none}}
    timeout: 200ms
"""
    proxy = await start_proxy(cfg)
    try:
        async with http.get(proxy.url + "/down/x") as r:
            assert r.status == 502
            assert r.headers["X-Authproxy-Error"] == "upstream_unavailable"
            assert (await json_of(r))["error"]["route"] == "down"
        async with http.get(proxy.url + "/slow/x") as r:
            assert r.status == 504
            assert r.headers["X-Authproxy-Error"] == "upstream_timeout"
    finally:
        await runner.cleanup()


async def test_redirects_are_passed_not_followed(
    echo: Echo, start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://elsewhere.example/"})

    echo.handler = handler
    proxy = await start_proxy(static_route(echo.url), env={"KEY": "k"})
    async with http.get(proxy.url + "/svc/r", allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "http://elsewhere.example/"


async def test_metrics_count_requests(
    echo: Echo, start_proxy: ProxyFactory, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(static_route(echo.url), env={"KEY": "k-metric-secret"})
    for _ in range(3):
        async with http.get(proxy.url + "/svc/m?q=private") as r:
            assert r.status == 200
    async with http.get(proxy.admin_url + "/metrics") as r:
        text = (await r.read()).decode()
    assert 'authproxy_requests_total{code="200",method="GET",route="svc"} 3.0' in text
    assert "k-metric-secret" not in text
    assert "private" not in text
