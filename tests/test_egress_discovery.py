"""Discovery's metadata request through the route's egress proxy (a real tinyproxy).

Discovery runs at config load (urllib, in a thread); with ``egress_proxy`` it is
tunnelled with CONNECT like the token and API requests, and a refusing proxy is a
config error on the key that asked for discovery, naming the proxy, not its
credentials.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from proxy import config as configmod
from proxy.app import create_app
from proxy.clock import ManualClock
from tests.fakes import serve
from tests.fakes.standards import Client, StandardsServer
from tests.forward_proxy import forward_proxy_fixture  # noqa: F401
from tests.tokenkit import call


def route_yaml(url: str, egress: str, ca_file: Path) -> str:
    return f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
routes:
  api:
    upstream: {url}/api/
    auth:
      type: oauth2_client_credentials
      discovery_url: {url}/.well-known/oauth-authorization-server
      client_id: app-1
      client_secret: app-1-secret
      client_auth: client_secret_basic
    tls: {{ca_file: {ca_file}}}
    egress_proxy: {egress}
"""


@pytest.fixture
async def tls_server(tmp_path: Path) -> Any:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    fake = StandardsServer(clock=ManualClock())
    fake.clients["app-1"] = Client("app-1", "client_secret_basic", secret="app-1-secret")
    async with serve(fake, ssl_context=ctx) as url:
        yield fake, url, ca_file


async def test_discovery_token_and_api_all_go_through_the_proxy(
    tls_server: Any, forward_proxy: Any, http: Any
) -> None:
    fake, url, ca_file = tls_server
    fp = forward_proxy()
    text = route_yaml(url, f"http://{fp.address}", ca_file)
    cfg = await asyncio.to_thread(configmod.parse, text, {})
    assert cfg.routes[0].auth.token_url == url + "/token"  # type: ignore[union-attr]
    assert fake.metadata_requests == 1
    target = url.removeprefix("https://")
    assert await fp.wait_connects(1) == [target]
    proxy = create_app(cfg, clock=fake.clock)
    await proxy.start()
    try:
        status, _, _ = await call(http, "GET", proxy.url + "/api/a")
        assert status == 200
    finally:
        await proxy.stop()
    assert fake.logins == 1
    # metadata, token, API: each in a tunnel of its own
    assert await fp.wait_connects(3) == [target, target, target]


async def test_discovery_refused_by_the_proxy_is_a_config_error_naming_it(
    tls_server: Any, forward_proxy: Any
) -> None:
    fake, url, ca_file = tls_server
    fp = forward_proxy(user="alice", password="right-Pa55")
    text = route_yaml(url, f"'http://alice:wrong-Pa55-Q1@{fp.address}'", ca_file)
    with pytest.raises(configmod.ConfigError) as err:
        await asyncio.to_thread(configmod.parse, text, {})
    message = str(err.value)
    assert "routes.api.auth.discovery_url: discovery failed" in message
    assert f"through egress proxy {fp.address}" in message and "401" in message
    assert "wrong-Pa55-Q1" not in message
    assert fake.metadata_requests == 0
