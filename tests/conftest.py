"""Shared fixtures: real servers on real loopback ports, and the real proxy.

- ``echo``: an upstream that records what it received and answers with it.
- ``start_proxy``: builds the real proxy from YAML text (ports default to 0, so
  every test gets free ports) and stops it afterwards.
- ``clock``: a ManualClock to hand to the proxy and the fake providers.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy import config as configmod
from proxy.app import Proxy, create_app
from proxy.clock import ManualClock
from proxy.tokens.flows.client import TokenClient


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@dataclass
class Echo:
    """A recording upstream. ``handler`` may be replaced per test."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None

    @property
    def last(self) -> Seen:
        return self.seen[-1]


async def serve_app(app: web.Application, ssl_context: Any = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    state = Echo()

    async def handle(request: web.Request) -> web.StreamResponse:
        if state.handler is not None:
            return await state.handler(request)
        body = await request.read()
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        state.seen.append(Seen(request.method, request.raw_path, headers, body))
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "sha256": hashlib.sha256(body).hexdigest(),
                "length": len(body),
            }
        )

    app = web.Application(client_max_size=2**40)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner, port = await serve_app(app)
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_000.0)


ProxyFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy() -> AsyncIterator[ProxyFactory]:
    started: list[Proxy] = []

    async def factory(
        text: str, *, env: dict[str, str] | None = None, clock: Any = None, store: Any = None
    ) -> Proxy:
        doc = textwrap.dedent(text)
        if "listen:" not in doc.split("routes:")[0]:
            doc = "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n" + doc
        cfg = configmod.parse(doc, env or {})
        proxy = create_app(cfg, clock=clock, store=store)
        await proxy.start()
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client, as an app would be: no decompression, no cookies kept."""
    async with aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
    ) as session:
        yield session


@pytest.fixture
async def token_client() -> AsyncIterator[TokenClient]:
    """The flows' own HTTP client, for tests that talk to token endpoints directly."""
    client = TokenClient(ssl_context=None, timeout=10.0, connect_timeout=5.0)
    yield client
    await client.close()


async def json_of(resp: aiohttp.ClientResponse) -> Any:
    return json.loads(await resp.read())
