"""The admin port: /metrics after real traffic, /healthz, /readyz, /status.

The proxy runs in front of strict fake providers; every family of the metrics
contract is scraped and parsed, with its label values checked to be the bounded
ones (route names, a fixed method set, status and error codes). No token or
secret may appear on any admin page.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.clock import ManualClock
from tests.fakes import Fault, GetPaid, InvoiceNg, serve
from tests.tokenkit import assert_no_token, call

CONTRACT = {
    "authproxy_requests_total": ("counter", {"route", "method", "code"}),
    "authproxy_request_duration_seconds": ("histogram", {"route"}),
    "authproxy_upstream_duration_seconds": ("histogram", {"route"}),
    "authproxy_token_requests_total": ("counter", {"route", "grant", "outcome"}),
    "authproxy_token_request_duration_seconds": ("histogram", {"route"}),
    "authproxy_token_expiry_timestamp_seconds": ("gauge", {"route"}),
    "authproxy_unauthorized_retries_total": ("counter", {"route", "outcome"}),
    "authproxy_inflight_requests": ("gauge", {"route"}),
    "authproxy_proxy_errors_total": ("counter", {"route", "code"}),
    "authproxy_config_reloads_total": ("counter", {"outcome"}),
    # beyond the contract, as users of other proxies ask for them
    "authproxy_token_lock_wait_seconds": ("histogram", {"route"}),
    "authproxy_token_cache_total": ("counter", {"route", "result"}),
}
INV_KEY = "invoice-ng-api-key-for-admin-test"
GP_SECRET = "getpaid-client-secret-for-admin-test"


@pytest.fixture
async def fakes(clock: ManualClock) -> AsyncIterator[tuple[InvoiceNg, GetPaid, str, str]]:
    inv = InvoiceNg(api_key=INV_KEY, clock=clock)
    gp = GetPaid(client_secret=GP_SECRET, clock=clock)
    async with serve(inv) as inv_url, serve(gp) as gp_url:
        yield inv, gp, inv_url, gp_url


def yaml_for(inv_url: str, gp_url: str) -> str:
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
"""


ENV = {"INV_KEY": INV_KEY, "GP_SECRET": GP_SECRET}


async def scrape(http: aiohttp.ClientSession, admin: str) -> tuple[str, dict[str, Any]]:
    async with http.get(admin + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = (await r.read()).decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def samples(family: Any, suffix: str = "") -> list[dict[str, str]]:
    return [s.labels for s in family.samples if s.name == family.name + suffix]


def value(family: Any, suffix: str = "", **labels: str) -> float:
    return sum(
        s.value
        for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_metrics_carry_every_family_with_bounded_labels(
    fakes: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    inv, gp, inv_url, gp_url = fakes
    proxy = await start_proxy(yaml_for(inv_url, gp_url), env=ENV, clock=clock)
    for _ in range(3):
        assert (await call(http, "GET", proxy.url + "/inv/invoices?secret_q=abc"))[0] == 200
        assert (await call(http, "POST", proxy.url + "/gp/charges", data=b"{}"))[0] == 200
    assert (await call(http, "PROPFIND", proxy.url + "/gp/x"))[0] == 200
    # A 401 replay: the provider revokes the token the proxy holds.
    inv.revoke_all()
    assert (await call(http, "GET", proxy.url + "/inv/after-revoke"))[0] == 200
    assert (await call(http, "GET", proxy.url + "/nowhere"))[0] == 404

    text, fams = await scrape(http, proxy.admin_url)
    for name, (kind, labels) in CONTRACT.items():
        base = name.removesuffix("_total")
        assert base in fams, f"{name} missing from /metrics"
        assert fams[base].type == kind, name
        for s in fams[base].samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)

    req = fams["authproxy_requests"]
    assert value(req, "_total", route="inv", method="GET", code="200") == 4
    assert value(req, "_total", route="gp", method="POST", code="200") == 3
    assert value(req, "_total", route="gp", method="other", code="200") == 1
    assert {lab["method"] for lab in samples(req, "_total")} <= {
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
    }  # fmt: skip
    # A request that matches no route is counted under route="" (issue 14).
    assert {lab["route"] for lab in samples(req, "_total")} == {"inv", "gp", ""}
    assert value(req, "_total", route="", method="GET", code="404") == 1
    assert value(fams["authproxy_request_duration_seconds"], "_count", route="inv") == 4
    assert value(fams["authproxy_upstream_duration_seconds"], "_count", route="gp") == 4
    tok = fams["authproxy_token_requests"]
    assert value(tok, "_total", route="gp", grant="client_credentials", outcome="success") == 1
    assert value(tok, "_total", route="inv", outcome="success") == 2  # login, then after the 401
    assert value(fams["authproxy_token_request_duration_seconds"], "_count", route="gp") == 1
    expiry = fams["authproxy_token_expiry_timestamp_seconds"]
    assert value(expiry, route="gp") == pytest.approx(clock.time() + 3600, abs=2)
    retries = fams["authproxy_unauthorized_retries"]
    assert value(retries, "_total", route="inv", outcome="replayed") == 1
    assert value(fams["authproxy_inflight_requests"], route="inv") == 0
    assert value(fams["authproxy_proxy_errors"], "_total", route="", code="no_route") == 1
    reloads = fams["authproxy_config_reloads"]
    assert {lab["outcome"] for lab in samples(reloads, "_total")} == {"success", "error"}
    cache = fams["authproxy_token_cache"]
    assert value(cache, "_total", route="gp", result="hit") >= 3
    assert value(cache, "_total", route="gp", result="miss") >= 1
    assert value(fams["authproxy_token_lock_wait_seconds"], "_count", route="gp") == 1

    # Nothing secret, no token, no path and no query in any label or value.
    assert_no_token(text, inv, gp)
    for secret in (INV_KEY, GP_SECRET, "secret_q", "/invoices", "after-revoke"):
        assert secret not in text


async def test_readyz_shows_a_failing_route_and_status_never_shows_a_token(
    fakes: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """With ``require_tokens: [gp]``, gp's failure is the pod's (see test_readiness for
    the default, where it is not)."""
    inv, gp, inv_url, gp_url = fakes
    gp.always_fault = Fault(status=500)
    text = yaml_for(inv_url, gp_url) + "readiness: {require_tokens: [gp]}\n"
    proxy = await start_proxy(text, env=ENV, clock=clock)
    status, body, _ = await call(http, "GET", proxy.url + "/gp/x")
    assert status in (502, 503)

    status, doc, headers = await call(http, "GET", proxy.admin_url + "/readyz")
    assert status == 503 and doc["ready"] is False and doc["draining"] is False
    assert doc["routes"]["gp"]["ready"] is False and doc["routes"]["gp"]["token_held"] is False
    assert "500" in doc["routes"]["gp"]["last_error"]
    assert headers["Cache-Control"] == "no-store"

    gp.always_fault = None
    clock.advance(120)  # past the backoff
    assert (await call(http, "GET", proxy.url + "/gp/x"))[0] == 200
    assert (await call(http, "GET", proxy.url + "/inv/x"))[0] == 200
    status, doc, _ = await call(http, "GET", proxy.admin_url + "/readyz")
    assert status == 200 and doc["ready"] is True
    gp_state = doc["routes"]["gp"]
    assert gp_state["token_held"] is True and gp_state["last_error"] is None
    assert gp_state["expires_in"] == pytest.approx(3600, abs=2)
    assert gp_state["auth"] == "getpaid" and gp_state["source"] == "client_credentials"

    status, body, _ = await call(http, "GET", proxy.admin_url + "/healthz")
    assert status == 200 and body == {"status": "ok"}

    # /status: JSON by Accept, HTML otherwise; the same per-route view.
    status, js, _ = await call(
        http, "GET", proxy.admin_url + "/status", headers={"Accept": "application/json"}
    )
    assert status == 200 and js["ready"] is True
    assert js["routes"]["inv"]["requests"] == 1 and js["routes"]["gp"]["requests"] == 2
    assert js["routes"]["inv"]["token"] == "valid"
    status, page, headers = await call(http, "GET", proxy.admin_url + "/status")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = page.decode()
    assert "<td>inv</td>" in html and "<td>gp</td>" in html and "in 59m" in html
    assert "invoice_ng" in html and "authproxy: ready" in html

    everything = html + repr(js) + repr(doc)
    assert_no_token(everything, inv, gp)
    assert INV_KEY not in everything and GP_SECRET not in everything


async def test_static_and_open_routes_are_ready_at_once(
    echo: Any, start_proxy: Any, http: aiohttp.ClientSession
) -> None:
    proxy = await start_proxy(
        f"""
routes:
  s:
    prefix: /s/
    upstream: {echo.url}/
    auth: {{type: static, header: X-Key, value: "${{env:K}}"}}
  n: {{prefix: /n/, upstream: {echo.url}/, auth: {{type: none}}}}
""",
        env={"K": "static-key-value-123"},
    )
    status, doc, _ = await call(http, "GET", proxy.admin_url + "/readyz")
    assert status == 200 and doc["routes"]["s"]["token"] == "not needed"
    status, page, _ = await call(http, "GET", proxy.admin_url + "/status")
    assert b"static-key-value-123" not in page and b"<td>static</td>" in page


async def test_admin_refuses_unknown_paths_and_methods_in_json(
    echo: Any, start_proxy: Any, http: aiohttp.ClientSession
) -> None:
    """The admin port has four endpoints; anything else gets the contract's JSON error."""
    proxy = await start_proxy(f"routes:\n  r: {{upstream: {echo.url}/, auth: {{type: none}}}}\n")
    async with http.get(proxy.admin_url + "/nope?x=1") as resp:
        assert resp.status == 404
        assert resp.headers["X-Authproxy-Error"] == "no_route"
        doc = (await resp.json())["error"]
        assert doc["code"] == "no_route" and "/metrics" in doc["message"]
    async with http.post(proxy.admin_url + "/healthz", data=b"x") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "GET, HEAD"
        assert (await resp.json())["error"]["code"] == "method_not_allowed"
    async with http.head(proxy.admin_url + "/healthz") as resp:
        assert resp.status == 200 and await resp.read() == b""
    async with http.get(proxy.admin_url + "/healthz?probe=1") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
        assert resp.headers["Cache-Control"] == "no-store"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_urls_of_ipv6_wildcard_listeners_reach_them(
    start_proxy: Any, http: aiohttp.ClientSession
) -> None:
    """`[::]` listeners (IPv6 clusters) are reached on [::1]; 127.0.0.1 would miss them."""
    proxy = await start_proxy(
        "listen: '[::]:0'\nadmin_listen: '[::]:0'\nallow_from: ['::1/128']\n"
        "routes:\n  api: {upstream: 'http://127.0.0.1:9/', auth: {type: none}}\n"
    )
    assert proxy.url.startswith("http://[::1]:")
    assert proxy.admin_url.startswith("http://[::1]:")
    async with http.get(proxy.admin_url + "/healthz") as resp:
        assert resp.status == 200
    async with http.get(proxy.url + "/nowhere/x") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "no_route"
