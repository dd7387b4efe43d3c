"""``authproxy demo``: a built-in provider, the real proxy in front of it, and a
short scripted walk through what authproxy does with tokens.

Everything runs on loopback: no network, no configuration. The provider is a
small aiohttp app that issues short-lived opaque tokens (a login endpoint, a
rotating refresh endpoint, a protected API, and an admin call that revokes
tokens). The proxy is the real one, built by :func:`proxy.app.create_app` from
a ``login`` route. Both share a :class:`DemoClock` that follows real time but
can be moved forward, so that "an hour later" takes no time at all. After every
step a line shows what the provider itself counted, so that a person can see
the flow is real. Tokens are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from proxy import config as configmod
from proxy.app import Proxy, create_app
from proxy.cli.common import run
from proxy.exit_codes import EXIT_FAIL, EXIT_OK
from proxy.telemetry import logs as logs

#: the demo provider's access token lifetime, in (demo clock) seconds
TOKEN_TTL = 60.0
USERNAME, PASSWORD = "demo", "demo-password"


class DemoClock:
    """Real time plus an offset the demo can move forward (:meth:`advance`)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class DemoProvider:
    """A tiny token provider with a protected API, counting what it sees."""

    clock: DemoClock
    ttl: float = TOKEN_TTL
    logins: int = 0
    refreshes: int = 0
    api_calls: int = 0
    rejected: int = 0
    access: dict[str, float] = field(default_factory=dict)  # token -> expiry
    refresh: set[str] = field(default_factory=set)
    bodies: list[str] = field(default_factory=list)  # sha256 of each API request body

    def counts(self) -> str:
        return (
            f"logins={self.logins} refreshes={self.refreshes} "
            f"api_calls={self.api_calls} rejected_401={self.rejected}"
        )

    def _pair(self) -> web.Response:
        access = "demo-at-" + secrets.token_hex(16)
        refresh = "demo-rt-" + secrets.token_hex(16)
        self.access[access] = self.clock.time() + self.ttl
        self.refresh.add(refresh)
        return web.json_response(
            {"access_token": access, "expires_in": self.ttl, "refresh_token": refresh}
        )

    async def login(self, request: web.Request) -> web.Response:
        data = await request.json()
        if data.get("username") != USERNAME or data.get("password") != PASSWORD:
            return web.json_response({"error": "invalid_credentials"}, status=401)
        self.logins += 1
        return self._pair()

    async def refresh_token(self, request: web.Request) -> web.Response:
        data = await request.json()
        token = data.get("refresh_token")
        if token not in self.refresh:
            return web.json_response({"error": "invalid_grant"}, status=400)
        self.refresh.discard(token)  # rotating: each refresh token works once
        self.refreshes += 1
        return self._pair()

    async def revoke(self, request: web.Request) -> web.Response:
        n = len(self.access)
        self.access.clear()
        return web.json_response({"revoked": n})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "logins": self.logins,
                "refreshes": self.refreshes,
                "api_calls": self.api_calls,
                "rejected_401": self.rejected,
            }
        )

    async def api(self, request: web.Request) -> web.Response:
        self.api_calls += 1
        body = await request.read()
        self.bodies.append(hashlib.sha256(body).hexdigest())
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        expiry = self.access.get(token)
        if expiry is None or self.clock.time() >= expiry:
            self.rejected += 1
            return web.json_response({"error": "invalid_token"}, status=401)
        return web.json_response(
            {
                "hello": "from the demo provider",
                "path": request.path,
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/login", self.login)
        app.router.add_post("/refresh", self.refresh_token)
        app.router.add_post("/admin/revoke", self.revoke)
        app.router.add_get("/admin/stats", self.stats)
        app.router.add_route("*", "/api/{tail:.*}", self.api)
        return app


def demo_config(provider_url: str) -> configmod.Config:
    text = f"""
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
routes:
  demo:
    prefix: /demo/
    upstream: {provider_url}/api/
    refresh_before: 60s
    auth:
      type: login
      request:
        method: POST
        url: {provider_url}/login
        json: {{username: {USERNAME}, password: {PASSWORD}}}
      response: {{access_token: access_token, expires_in: expires_in,
                  refresh_token: refresh_token}}
      refresh:
        method: POST
        url: {provider_url}/refresh
        json: {{refresh_token: "{{refresh_token}}"}}
"""
    return configmod.parse(text, {}, source="demo")


@dataclass
class _Script:
    """The scripted walk: each step a request or two, then the provider's counts."""

    proxy: Proxy
    provider: DemoProvider
    provider_url: str
    clock: DemoClock
    http: aiohttp.ClientSession
    failures: int = 0

    async def request(self, method: str, path: str, body: bytes | None = None) -> int:
        async with self.http.request(method, self.proxy.url + path, data=body) as resp:
            answer = await resp.read()
            status = resp.status
            code = resp.headers.get("X-Authproxy-Error")
        print(f"   {method} {path} -> {status}")
        if status != 200:
            self.failures += 1
            if code:  # the proxy's own error JSON never holds a token: safe to show
                print(f"   authproxy answered: {answer.decode(errors='replace')}")
        return status

    def counted(self) -> None:
        print(f"   provider counted: {self.provider.counts()}")

    async def wait(self, cond: Callable[[], bool], timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def run(self) -> None:
        p = self.provider
        print("1. Token obtained (login): authproxy logs in at the provider (from start-up;")
        print("   a first request waits for that login), attaches the token, and forwards.")
        await self.request("GET", "/demo/invoices")
        self.counted()

        print("2. Cached: the next requests reuse the same token; no new login.")
        await self.request("GET", "/demo/invoices?page=2")
        await self.request("GET", "/demo/customers")
        self.counted()

        print(f"3. Refreshed early, in the background: {TOKEN_TTL / 2:.0f} s before expiry")
        print("   (half the token's life) the request is answered with the current token")
        print("   at once, while authproxy refreshes it behind the scenes.")
        self.clock.advance(TOKEN_TTL / 2 + 5)
        started = time.monotonic()
        await self.request("GET", "/demo/invoices")
        waited = time.monotonic() - started
        await self.wait(lambda: p.refreshes >= 1)
        self.counted()
        print(f"   (the request took {waited * 1000:.0f} ms: it did not wait for the refresh)")

        print("4. Expired and refreshed: the clock jumps past the token's expiry.")
        print("   An expired token is never sent: authproxy refreshes first, then forwards.")
        self.clock.advance(TOKEN_TTL + 10)
        before = p.rejected
        await self.request("GET", "/demo/invoices")
        self.counted()
        print(f"   (the provider rejected {p.rejected - before} requests: none saw the old token)")

        print("5. A 401 answered by refresh and replay: the provider revokes every token.")
        print("   authproxy gets a 401, refreshes, and replays the same request body once.")
        async with self.http.post(self.provider_url + "/admin/revoke") as r:
            await r.read()
        body = os.urandom(2048)
        await self.request("POST", "/demo/invoices", body)
        self.counted()
        same = p.bodies[-2:] == [hashlib.sha256(body).hexdigest()] * 2
        replays = self.proxy.metrics.registry.get_sample_value(
            "authproxy_unauthorized_retries_total", {"route": "demo", "outcome": "replayed"}
        )
        print(
            f"   (replayed {replays or 0:.0f} time; the provider saw the same body both times: "
            f"{'yes' if same else 'NO'})"
        )


def command(args: argparse.Namespace) -> int:
    logs.setup(args.log_format, args.log_level)
    return run(demo(keep=args.keep))


async def demo(keep: bool = False) -> int:
    """Run the demo; with ``keep``, leave both running until Ctrl-C. Exit status."""
    clock = DemoClock()
    provider = DemoProvider(clock)
    runner = web.AppRunner(provider.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    provider_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    proxy = create_app(demo_config(provider_url), clock=clock)
    try:
        await proxy.start()
        print("authproxy demo: everything runs on this machine, nothing leaves it.")
        print(f"   provider: {provider_url} (login, refresh, API; tokens live {TOKEN_TTL:.0f} s)")
        print(f"   authproxy: {proxy.url}/demo/ -> {provider_url}/api/")
        print("   The demo moves the clock forward instead of waiting. Tokens are never shown.")
        print()
        async with aiohttp.ClientSession() as http:
            script = _Script(proxy, provider, provider_url, clock, http)
            await script.run()
        print()
        if script.failures:
            print(f"demo: {script.failures} request(s) failed")
            return EXIT_FAIL
        print("All requests answered 200; the application never handled a token.")
        if keep:
            await _keep(proxy, provider_url)
        return EXIT_OK
    finally:
        await proxy.stop()
        await runner.cleanup()


async def _keep(proxy: Proxy, provider_url: str) -> None:
    print()
    print("Both keep running (tokens now expire in real time, every 60 s). Try:")
    print(f"   curl -s {proxy.url}/demo/invoices")
    print(f"   curl -s -X POST {provider_url}/admin/revoke   # then the request above again")
    print(f"   curl -s {provider_url}/admin/stats              # what the provider counted")
    print(f"   curl -s {proxy.admin_url}/metrics | grep authproxy_token")
    print("Press Ctrl-C to stop.", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("demo: stopped")
