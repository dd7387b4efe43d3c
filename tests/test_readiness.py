"""Readiness that does not cascade (issue 14, item 1).

A sidecar's /readyz takes the application's pod out of its Service. One provider's
outage must not do that for every replica at once: the proxy is ready once each
token route has a token or one finished first attempt; a route's own health is in
/readyz's JSON and in ``authproxy_route_ready{route}``. ``readiness.require_tokens``
gates readiness on the routes a user names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy import config as configmod
from proxy.clock import ManualClock
from tests.fakes import Fault, GetPaid, InvoiceNg, serve
from tests.tokenkit import call, metric
from tests.waiting import until

ENV = {"INV_KEY": "invoice-ng-key-for-readiness", "GP_SECRET": "getpaid-secret-for-readiness"}


@pytest.fixture
async def fakes(clock: ManualClock) -> AsyncIterator[tuple[InvoiceNg, GetPaid, str, str]]:
    inv = InvoiceNg(api_key=ENV["INV_KEY"], clock=clock)
    gp = GetPaid(client_secret=ENV["GP_SECRET"], clock=clock)
    async with serve(inv) as inv_url, serve(gp) as gp_url:
        yield inv, gp, inv_url, gp_url


def yaml_for(inv_url: str, gp_url: str, extra: str = "") -> str:
    return f"""
routes:
  inv:
    auth: {{preset: invoice_ng, api_key: "${{env:INV_KEY}}", base_url: {inv_url}/v1/}}
  gp:
    upstream: {gp_url}/
    auth:
      preset: getpaid
      client_id: getpaid-test-client-id
      client_secret: ${{env:GP_SECRET}}
      token_url: {gp_url}/oauth/token
{extra}"""


async def readyz(http: aiohttp.ClientSession, proxy: Any) -> tuple[int, Any]:
    status, doc, _ = await call(http, "GET", proxy.admin_url + "/readyz")
    return status, doc


async def test_one_failing_provider_does_not_take_the_pod_out(
    fakes: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    inv, gp, inv_url, gp_url = fakes
    gp.always_fault = Fault(status=500)
    proxy = await start_proxy(yaml_for(inv_url, gp_url), env=ENV, clock=clock)
    await until(lambda: gp.token_requests >= 1 and proxy.routes["gp"].manager.last_error)
    status, doc = await readyz(http, proxy)
    assert status == 200 and doc["ready"] is True  # was 503 before issue 14
    assert doc["routes"]["gp"]["ready"] is False and doc["routes"]["gp"]["attempted"] is True
    assert "500" in doc["routes"]["gp"]["last_error"]
    assert doc["routes"]["inv"]["ready"] is True
    assert doc["require_tokens"] == [] and doc["store"]["type"] == "memory"
    # the other provider's traffic is served; the failing one answers its own error
    assert (await call(http, "GET", proxy.url + "/inv/x"))[0] == 200
    assert (await call(http, "GET", proxy.url + "/gp/x"))[0] in (502, 503)
    assert await metric(http, proxy.admin_url, "authproxy_route_ready", route="gp") == 0
    assert await metric(http, proxy.admin_url, "authproxy_route_ready", route="inv") == 1

    gp.always_fault = None
    clock.advance(120)  # past the backoff
    assert (await call(http, "GET", proxy.url + "/gp/x"))[0] == 200
    assert await metric(http, proxy.admin_url, "authproxy_route_ready", route="gp") == 1


async def test_not_ready_until_each_token_route_has_had_a_first_attempt(
    fakes: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    inv, gp, inv_url, gp_url = fakes
    gp.always_fault = Fault(status=None, delay=30)  # the first login hangs
    proxy = await start_proxy(yaml_for(inv_url, gp_url), env=ENV, clock=clock)
    await until(lambda: gp.token_requests >= 1, "gp's first token request")
    status, doc = await readyz(http, proxy)
    assert status == 503 and doc["ready"] is False
    assert doc["routes"]["gp"]["attempted"] is False and doc["routes"]["inv"]["attempted"]


async def test_require_tokens_gates_readiness_on_the_named_route(
    fakes: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    inv, gp, inv_url, gp_url = fakes
    inv.always_fault = Fault(status=500)  # not required: does not matter
    gp.always_fault = Fault(status=500)
    extra = "readiness: {require_tokens: [gp]}\n"
    proxy = await start_proxy(yaml_for(inv_url, gp_url, extra), env=ENV, clock=clock)
    await until(lambda: proxy.routes["gp"].manager.last_error, "gp's failed first attempt")
    status, doc = await readyz(http, proxy)
    assert status == 503 and doc["require_tokens"] == ["gp"]
    assert doc["routes"]["gp"]["required"] is True and doc["routes"]["inv"]["required"] is False
    gp.always_fault = None
    clock.advance(120)
    assert (await call(http, "GET", proxy.url + "/gp/x"))[0] == 200
    await until(lambda: proxy.routes["inv"].manager.last_error, "inv failed")
    status, doc = await readyz(http, proxy)
    assert status == 200 and doc["routes"]["inv"]["ready"] is False


def test_require_tokens_names_token_routes_and_listen_differs_from_admin() -> None:
    text = """listen: 0.0.0.0:8080
admin_listen: 127.0.0.1:8080
insecure_allow_any: true
readiness:
  require_tokens: [nope, open]
routes:
  open: {upstream: http://127.0.0.1:1/, auth: {type: none}}
"""
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse(text, {})
    msg = str(err.value)
    assert "admin_listen" in msg and "is also `listen`" in msg
    assert "readiness.require_tokens[0]" in msg and "'nope' is not a route" in msg
    assert "readiness.require_tokens[1]" in msg and "uses no token" in msg
    assert "line 2" in msg or ":2" in msg
    # port 0 (any free port) twice is fine; so are two ports
    configmod.parse("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n" + text.split("\n", 5)[5], {})
