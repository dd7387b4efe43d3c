"""Live reload: Kubernetes-style secret rotation under load, refusal, token keeping.

The proxy is the real one on real ports, loaded from a config file on disk, with
the real :class:`proxy.ops.reload.Reloader` watching it (polling every 0.1 s here,
1 s in production).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy import config as configmod
from proxy.app import Proxy, create_app
from proxy.ops.reload import Reloader
from tests.conftest import Echo
from tests.fakes import GetPaid, InvoiceNg, serve
from tests.tokenkit import call, metric
from tests.waiting import until


async def until_status(
    http: aiohttp.ClientSession, url: str, status: int, timeout: float = 20.0
) -> None:
    """Until GET ``url`` answers ``status`` (a refused connection counts as not yet);
    fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            got: object = (await call(http, "GET", url))[0]
        except aiohttp.ClientError as exc:
            got = type(exc).__name__
        if got == status:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{url}: {got}, not {status}"
        await asyncio.sleep(0.02)


class K8sVolume:
    """A directory laid out as kubelet mounts a Secret: name -> ..data/name,
    ..data -> ..<version>; an update writes a new version and swaps ..data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir(parents=True, exist_ok=True)

    def write(self, files: dict[str, str]) -> None:
        self.version += 1
        target = self.root / f"..2024_{self.version:02d}"
        target.mkdir()
        for name, text in files.items():
            (target / name).write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        os.replace(tmp, self.root / "..data")  # atomic, as kubelet does
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")

    def path(self, name: str) -> str:
        return str(self.root / name)


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., Any]]:
    """``await running(config_path)``: (proxy, reloader), both stopped afterwards."""
    started: list[tuple[Proxy, Reloader]] = []

    async def start(path: Path, **kwargs: Any) -> tuple[Proxy, Reloader]:
        proxy = create_app(configmod.load(str(path)), **kwargs)
        await proxy.start()
        reloader = Reloader(proxy, str(path), interval=0.1)
        reloader.start()
        started.append((proxy, reloader))
        return proxy, reloader

    yield start
    for proxy, reloader in started:
        reloader.stop()
        await proxy.stop()


HEAD = "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"


async def test_secret_rotation_through_symlink_swap_under_load(
    tmp_path: Path, echo: Echo, running: Any, http: aiohttp.ClientSession
) -> None:
    vol = K8sVolume(tmp_path / "secret")
    vol.write({"api-key": "key-version-one\n"})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        HEAD
        + f"""routes:
  static:
    prefix: /s/
    upstream: {echo.url}/
    auth: {{type: static, header: X-Api-Key, value: "${{file:{vol.path("api-key")}}}"}}
"""
    )
    proxy, _ = await running(cfg)
    failures: list[int] = []
    done = asyncio.Event()

    async def load() -> None:
        while not done.is_set():
            status, _, _ = await call(http, "GET", proxy.url + "/s/ping")
            if status != 200:
                failures.append(status)

    workers = [asyncio.create_task(load()) for _ in range(4)]
    await until(lambda: len(echo.seen) >= 20, "the load under way")
    seen_before = len(echo.seen)
    vol.write({"api-key": "key-version-two\n"})
    await until(lambda: echo.seen[-1].header("X-Api-Key") == "key-version-two", "the new key")
    swapped = len(echo.seen)
    await until(lambda: len(echo.seen) >= swapped + 20, "the load kept on after the swap")
    done.set()
    await asyncio.gather(*workers)

    assert failures == []
    values = [s.header("X-Api-Key") for s in echo.seen]
    assert values[0] == "key-version-one" and values[-1] == "key-version-two"
    # Old value, then new value, never back: the swap is atomic for new requests.
    switch = values.index("key-version-two")
    assert set(values[switch:]) == {"key-version-two"}
    assert seen_before > 5 and len(values) > seen_before + 5
    assert await metric(http, proxy.admin_url, "authproxy_config_reloads_total", outcome="success")
    assert proxy.config.route("static").auth.value == "key-version-two"  # type: ignore[union-attr]


async def test_invalid_config_is_refused_and_old_one_keeps_serving(
    tmp_path: Path,
    echo: Echo,
    running: Any,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = tmp_path / "config.yaml"
    good = (
        HEAD
        + f"""routes:
  static:
    prefix: /s/
    upstream: {echo.url}/
    auth: {{type: static, header: X-Api-Key, value: "${{env:HOME}}-very-secret-value"}}
"""
    )
    cfg.write_text(good)
    proxy, reloader = await running(cfg)
    assert (await call(http, "GET", proxy.url + "/s/a"))[0] == 200

    # Two problems: a typo'd key and an upstream that is not a URL.
    cfg.write_text(
        good.replace("upstream:", "upstreem:").replace(
            "prefix: /s/", "prefix: /s/\n    timeout: soon"
        )
    )
    with caplog.at_level(logging.INFO, logger="authproxy"):
        assert await reloader.reload() is False
    refused = [r for r in caplog.records if "reload refused" in r.getMessage()]
    assert len(refused) == 1
    text = refused[0].getMessage()
    assert "routes.static.upstreem" in text and "routes.static.timeout" in text
    assert "very-secret-value" not in caplog.text

    status, _, _ = await call(http, "GET", proxy.url + "/s/still")
    assert status == 200 and echo.last.raw_path == "/still"
    assert (
        echo.last.header(
            "X-Api-Key",
        )
        == os.environ["HOME"] + "-very-secret-value"
    )
    errors = await metric(http, proxy.admin_url, "authproxy_config_reloads_total", outcome="error")
    assert errors == 1
    assert (
        await metric(http, proxy.admin_url, "authproxy_config_reloads_total", outcome="success")
        == 0
    )

    # The watcher does not retry the same bad file at every poll...
    polls = 0
    snapshot = reloader._snapshot

    def counted() -> Any:
        nonlocal polls
        polls += 1
        return snapshot()

    reloader._snapshot = counted
    await until(lambda: polls >= 3, "three polls of the watcher")
    assert (
        await metric(http, proxy.admin_url, "authproxy_config_reloads_total", outcome="error") == 1
    )
    # ...but picks up the fix by itself.
    cfg.write_text(good.replace("/s/", "/t/"))
    await until_status(http, proxy.url + "/t/fixed", 200)
    status, body, headers = await call(http, "GET", proxy.url + "/s/gone")
    assert status == 404 and headers["X-Authproxy-Error"] == "no_route"


async def test_changed_credentials_drop_the_token_others_keep_theirs(
    tmp_path: Path, running: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    inv = InvoiceNg(api_key="first-invoice-ng-key")
    gp = GetPaid()
    keys = K8sVolume(tmp_path / "keys")
    keys.write({"inv": "first-invoice-ng-key"})
    slow_started = asyncio.Event()

    async def slow(request: web.Request, token: Any) -> web.StreamResponse:
        if request.path.endswith("/slow"):
            slow_started.set()
            await asyncio.sleep(0.8)
        return web.json_response({"path": request.path})

    inv.api_handler = slow
    async with serve(inv) as inv_url, serve(gp) as gp_url:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(
            HEAD
            + f"""routes:
  inv:
    auth: {{preset: invoice_ng, api_key: "${{file:{keys.path("inv")}}}", base_url: {inv_url}/v1/}}
  gp:
    upstream: {gp_url}/
    auth:
      preset: getpaid
      client_id: {gp.client_id}
      client_secret: {gp.client_secret}
      token_url: {gp_url}/oauth/token
"""
        )
        proxy, reloader = await running(cfg)
        for path in ("/inv/a", "/gp/a", "/inv/b", "/gp/b"):
            assert (await call(http, "GET", proxy.url + path))[0] == 200
        assert inv.logins == 1 and gp.token_requests == 1
        gp_runtime = proxy.routes["gp"]

        # A request in flight on the old inv runtime while its key rotates.
        slow_req = asyncio.create_task(call(http, "GET", proxy.url + "/inv/slow"))
        await slow_started.wait()
        inv.api_key = "second-invoice-ng-key"
        keys.write({"inv": "second-invoice-ng-key"})
        with caplog.at_level(logging.INFO, logger="authproxy"):
            assert await reloader.reload() is True
        status, body, _ = await slow_req
        assert status == 200 and body["path"] == "/v1/slow"  # not disturbed

        for path in ("/inv/c", "/gp/c", "/inv/d", "/gp/d"):
            assert (await call(http, "GET", proxy.url + path))[0] == 200
        assert inv.logins == 2  # new credentials: the old token was dropped
        assert inv.token_log[-1].body == b'{"api_key": "second-invoice-ng-key"}'
        assert gp.token_requests == 1  # unchanged route: same runtime, same token
        assert proxy.routes["gp"] is gp_runtime
        reloaded = [r for r in caplog.records if r.getMessage() == "config reloaded"]
        assert reloaded and reloaded[0].changed == ["inv"] and reloaded[0].kept == ["gp"]
        # The replaced runtime is closed once its request finished.
        await until(lambda: not proxy._retired, "the replaced runtime closed")


async def test_removed_route_finishes_in_flight_and_listen_change_is_logged(
    tmp_path: Path, running: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        started.set()
        await asyncio.sleep(0.5)
        return web.Response(body=b"x" * 100_000)

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    async with _serve_app(app) as url:
        cfg = tmp_path / "config.yaml"
        body = f"""routes:
  a: {{prefix: /a/, upstream: {url}/, auth: {{type: none}}}}
  b: {{prefix: /b/, upstream: {url}/, auth: {{type: none}}}}
"""
        cfg.write_text(HEAD + body)
        proxy, reloader = await running(cfg)
        req = asyncio.create_task(call(http, "GET", proxy.url + "/b/slow"))
        await started.wait()
        cfg.write_text(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:1\n"
            + body.replace(body.splitlines()[2], "")
        )
        with caplog.at_level(logging.INFO, logger="authproxy"):
            assert await reloader.reload() is True
        assert "admin_listen changed; it takes effect after a restart" in caplog.text
        status, got, _ = await call(http, "GET", proxy.url + "/b/new")
        assert status == 404
        status, got, _ = await req
        assert status == 200 and len(got) == 100_000
        assert (await call(http, "GET", proxy.url + "/a/x"))[0] == 200


class _serve_app:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def __aenter__(self) -> str:
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def test_sighup_reloads_a_serve_process(
    tmp_path: Path, echo: Echo, http: aiohttp.ClientSession
) -> None:
    import signal
    import socket
    import sys

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            return port

    port, admin = free_port(), free_port()
    cfg = tmp_path / "config.yaml"
    head = f"listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\nroutes:\n"
    cfg.write_text(head + f"  a: {{prefix: /a/, upstream: {echo.url}/, auth: {{type: none}}}}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(cfg),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await until_status(http, url + "/a/x", 200)
        # Write the new file and signal at once: whichever of SIGHUP and the
        # watcher comes first reloads it, and the other finds nothing new.
        cfg.write_text(
            head + f"  b: {{prefix: /b/, upstream: {echo.url}/, auth: {{type: none}}}}\n"
        )
        proc.send_signal(signal.SIGHUP)
        await until_status(http, url + "/b/x", 200)
        assert (await call(http, "GET", url + "/a/x"))[0] == 404
        ok = await metric(http, f"http://127.0.0.1:{admin}", "authproxy_config_reloads_total",
                          outcome="success")  # fmt: skip
        assert ok >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=15)
    assert proc.returncode == 0
    assert b"reload requested (SIGHUP)" in stderr and b"config reloaded" in stderr


async def test_route_with_only_a_timeout_changed_keeps_its_token(
    tmp_path: Path, running: Any, http: aiohttp.ClientSession
) -> None:
    gp = GetPaid()
    async with serve(gp) as gp_url:
        cfg = tmp_path / "config.yaml"
        text = (
            HEAD
            + f"""routes:
  gp:
    upstream: {gp_url}/
    timeout: 30s
    auth:
      preset: getpaid
      client_id: {gp.client_id}
      client_secret: {gp.client_secret}
      token_url: {gp_url}/oauth/token
"""
        )
        cfg.write_text(text)
        proxy, reloader = await running(cfg)
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
        before = proxy.routes["gp"]
        cfg.write_text(text.replace("timeout: 30s", "timeout: 45s"))
        assert await reloader.reload() is True
        assert proxy.routes["gp"] is not before and proxy.routes["gp"].config.timeout == 45
        assert (await call(http, "GET", proxy.url + "/gp/b"))[0] == 200
        assert gp.token_requests == 1  # the new runtime found the token in the store
