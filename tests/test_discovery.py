"""Discovery (RFC 8414, OpenID Connect Discovery): endpoints from the server's
metadata, read when the config is loaded; clear config errors otherwise.

The config is parsed in a thread, as `serve`, `check` and a reload do: the
metadata is read synchronously and the fake runs on this test's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy import config as configmod
from proxy.app import create_app
from proxy.clock import ManualClock
from tests.fakes import serve
from tests.fakes.standards import Client, StandardsServer
from tests.tokenkit import call

HEAD = "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"


def discovery_yaml(key: str, value: str) -> str:
    return f"""{HEAD}routes:
  api:
    upstream: http://127.0.0.1:9/
    auth:
      type: oauth2_client_credentials
      {key}: {value}
      client_id: app-1
      client_secret: app-1-secret
      client_auth: client_secret_basic
"""


@pytest.fixture
async def server() -> AsyncIterator[tuple[StandardsServer, str]]:
    fake = StandardsServer(clock=ManualClock())
    fake.clients["app-1"] = Client("app-1", "client_secret_basic", secret="app-1-secret")
    async with serve(fake) as url:
        yield fake, url


async def parse(text: str) -> configmod.Config:
    return await asyncio.to_thread(configmod.parse, text, {})


async def problems_of(text: str) -> list[configmod.Problem]:
    with pytest.raises(configmod.ConfigError) as err:
        await parse(text)
    return err.value.problems


@pytest.mark.parametrize("key", ["issuer", "discovery_url"])
async def test_token_endpoint_from_metadata(key: str, server: Any, http: Any) -> None:
    fake, url = server
    value = url + "/" if key == "issuer" else url + "/.well-known/oauth-authorization-server"
    text = discovery_yaml(key, value).replace("http://127.0.0.1:9/", url + "/api/")
    cfg = await parse(text)
    assert cfg.routes[0].auth.token_url == url + "/token"  # type: ignore[union-attr]
    assert fake.metadata_requests == 1
    proxy = create_app(cfg, clock=fake.clock)
    await proxy.start()
    try:
        assert (await call(http, "GET", proxy.url + "/api/a"))[0] == 200
        fake.revoke_all()
        assert (await call(http, "GET", proxy.url + "/api/b"))[0] == 200  # a new token
    finally:
        await proxy.stop()
    assert fake.logins == 2 and fake.metadata_requests == 1  # never per token request
    await parse(text)  # a reload reads it again
    assert fake.metadata_requests == 2


async def test_unreachable_metadata_is_a_config_error_on_its_key() -> None:
    from tests.redis_fixture import free_port

    (problem,) = await problems_of(discovery_yaml("issuer", f"http://127.0.0.1:{free_port()}/"))
    assert problem.path == "routes.api.auth.issuer" and problem.line == 8
    assert problem.message.startswith("discovery failed:") and "unreachable" in problem.message


async def test_metadata_without_token_endpoint_or_of_another_issuer(server: Any) -> None:
    fake, url = server
    fake.metadata_overrides = {"token_endpoint": None}
    (problem,) = await problems_of(discovery_yaml("issuer", url + "/"))
    assert problem.message == "the server's metadata has no usable token_endpoint"
    fake.metadata_overrides = {"issuer": "https://elsewhere.example/"}
    (problem,) = await problems_of(discovery_yaml("issuer", url + "/"))
    assert "RFC 8414 3.3" in problem.message and problem.path == "routes.api.auth.issuer"


def test_issuer_and_discovery_url_together_is_an_error() -> None:
    text = discovery_yaml("issuer", "https://a.example/") + (
        "      discovery_url: https://a.example/.well-known/openid-configuration\n"
    )
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse(text, {})
    assert [p.path for p in err.value.problems] == ["routes.api.auth.discovery_url"]
