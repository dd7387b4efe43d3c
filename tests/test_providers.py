"""Every seed provider through the real proxy, by generic auth type and by preset.

Each test runs the strict fake of one seed document on a real port, the real
proxy in front of it with a ManualClock shared by both, and checks what the
provider's API received (the injected Authorization header, path, body), what
the client got back, and what the provider counted at its token endpoints.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.clock import ManualClock
from tests.fakes import B2B, GetPaid, Invoiced, InvoiceNg, Taxizer, serve
from tests.fakes.getpaid import SANDBOX_AUDIENCE
from tests.tokenkit import assert_no_token, call, metric
from tests.waiting import until

MODES = ["generic", "preset"]


@pytest.fixture
async def fake_url() -> AsyncIterator[Any]:
    """``await fake_url(provider)`` serves it for the test; returns its base URL."""
    stack: list[Any] = []

    async def start(provider: Any) -> str:
        cm = serve(provider)
        url: str = await cm.__aenter__()
        stack.append(cm)
        return url

    yield start
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


def bearer_of(seen_headers: dict[str, str]) -> str:
    value = seen_headers["authorization"]
    assert value.startswith("Bearer ")
    return value[len("Bearer ") :]


# -- Invoice.ng (seed 000) --------------------------------------------------------------


def invoice_ng_yaml(mode: str, url: str) -> str:
    if mode == "preset":
        auth = f"""
      preset: invoice_ng
      api_key: ${{env:KEY}}
      base_url: {url}/v1/"""
    else:
        auth = f"""
      type: login
      request:
        method: POST
        url: {url}/v1/authenticate
        json: {{api_key: "${{env:KEY}}"}}
      response: {{access_token: token, expires_at: expiry}}
      refresh:
        method: GET
        url: {url}/v1/token/refresh
        headers: {{Authorization: "Bearer {{access_token}}"}}
        response: {{access_token: refresh_token, expires_at: expiry}}"""
    upstream = "" if mode == "preset" else f"\n    upstream: {url}/v1/"
    return f"""
routes:
  inv:{upstream}
    auth:{auth}
"""


@pytest.mark.parametrize("mode", MODES)
async def test_invoice_ng_login_cache_and_refresh(
    mode: str, fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake = InvoiceNg(clock=clock)
    url = await fake_url(fake)
    proxy = await start_proxy(invoice_ng_yaml(mode, url), env={"KEY": fake.api_key}, clock=clock)

    status, body, _ = await call(http, "POST", proxy.url + "/inv/invoices?page=2", data=b"{}")
    assert status == 200
    assert body["path"] == "/v1/invoices" and body["query"] == "page=2"
    first = bearer_of(fake.api_log[-1].headers)
    assert first == fake.issued[0]
    login = fake.token_log[0]
    assert login.method == "POST" and login.content_type == "application/json"
    assert login.body == b'{"api_key": "' + fake.api_key.encode() + b'"}'
    for _ in range(5):
        assert (await call(http, "GET", proxy.url + "/inv/clients"))[0] == 200
    assert fake.logins == 1 and fake.token_requests == 1  # cached

    # Past expiry: refresh with the current bearer (GET), which invalidates it.
    clock.advance(3600)
    status, body, _ = await call(http, "GET", proxy.url + "/inv/clients")
    assert status == 200
    assert fake.refreshes == 1 and fake.logins == 1
    refresh = fake.token_log[-1]
    assert refresh.method == "GET" and refresh.headers["authorization"] == f"Bearer {first}"
    second = bearer_of(fake.api_log[-1].headers)
    assert second != first and fake.access_tokens[first].revoked
    # No request ever carried an expired or invalidated token.
    assert all(r.status == 200 for r in fake.api_log)


async def test_invoice_ng_bad_key_is_token_unavailable(
    fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake = InvoiceNg(clock=clock)
    url = await fake_url(fake)
    proxy = await start_proxy(invoice_ng_yaml("preset", url), env={"KEY": "wrong"}, clock=clock)
    status, body, headers = await call(http, "GET", proxy.url + "/inv/x")
    assert status == 502 and headers["X-Authproxy-Error"] == "token_unavailable"
    assert body["error"]["message"] == "token endpoint answered 401"
    assert "wrong" not in str(body)
    assert fake.api_requests == 0


# -- Invoiced (seed 001) ----------------------------------------------------------------


def invoiced_yaml(mode: str, url: str) -> str:
    if mode == "preset":
        return f"""
routes:
  invd:
    auth:
      preset: invoiced
      client_id: {Invoiced().client_id}
      client_secret: ${{env:SECRET}}
      refresh_token: ${{env:RT}}
      base_url: {url}/
      token_url: {url}/oauth/access_token
"""
    return f"""
routes:
  invd:
    upstream: {url}/
    auth:
      type: oauth2_refresh_token
      token_url: {url}/oauth/access_token
      client_id: {Invoiced().client_id}
      client_secret: ${{env:SECRET}}
      refresh_token: ${{env:RT}}
"""


@pytest.mark.parametrize("mode", MODES)
async def test_invoiced_refresh_grant_rotates(
    mode: str, fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake = Invoiced(clock=clock)
    url = await fake_url(fake)
    rt = fake.grant_refresh_token()
    env = {"SECRET": fake.client_secret, "RT": rt}
    proxy = await start_proxy(invoiced_yaml(mode, url), env=env, clock=clock)

    status, body, _ = await call(http, "GET", proxy.url + "/invd/invoices")
    assert status == 200 and body["path"] == "/invoices"
    first = fake.token_log[0]
    assert first.content_type == "application/x-www-form-urlencoded"
    form = dict(p.split("=", 1) for p in first.body.decode().split("&"))
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == rt
    assert form["client_id"] == fake.client_id
    # expires_in is honoured: the token lives exactly 3600 s.
    manager = proxy.routes["invd"].manager
    assert manager.token.expires_at == pytest.approx(clock.time() + 3600)

    for _ in range(3):
        clock.advance(3600)
        assert (await call(http, "GET", proxy.url + "/invd/invoices"))[0] == 200
    # Each refresh used the refresh token rotated by the previous one.
    assert fake.refreshes == 4 and fake.token_requests == 4
    used = [dict(p.split("=", 1) for p in r.body.decode().split("&")) for r in fake.token_log]
    assert len({u["refresh_token"] for u in used}) == 4
    assert all(r.status == 200 for r in fake.token_log + fake.api_log)


async def test_invoiced_without_refresh_token_asks_for_consent(
    fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake = Invoiced(clock=clock)
    url = await fake_url(fake)
    text = invoiced_yaml("generic", url).replace("      refresh_token: ${env:RT}\n", "")
    proxy = await start_proxy(text, env={"SECRET": fake.client_secret}, clock=clock)
    status, body, headers = await call(http, "GET", proxy.url + "/invd/invoices")
    assert status == 502 and headers["X-Authproxy-Error"] == "token_unavailable"
    assert "authproxy authorize invd" in body["error"]["message"]
    assert fake.token_requests == 0


async def test_invoiced_refused_refresh_token(
    fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake = Invoiced(clock=clock)
    url = await fake_url(fake)
    env = {"SECRET": fake.client_secret, "RT": "def50200-not-a-real-one"}
    proxy = await start_proxy(invoiced_yaml("generic", url), env=env, clock=clock)
    status, body, _ = await call(http, "GET", proxy.url + "/invd/invoices")
    assert status == 502
    message = body["error"]["message"]
    assert message.startswith("token endpoint answered 400 (invalid_grant)")
    assert "def50200-not-a-real-one" not in message


async def test_invoiced_form_only_and_basic_auth(
    fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake = Invoiced(clock=clock, allow_basic_auth=True)
    url = await fake_url(fake)
    env = {"SECRET": fake.client_secret, "RT": fake.grant_refresh_token()}
    text = invoiced_yaml("generic", url) + "      client_auth: basic\n"
    proxy = await start_proxy(text, env=env, clock=clock)
    assert (await call(http, "GET", proxy.url + "/invd/invoices"))[0] == 200
    req = fake.token_log[0]
    assert req.headers["authorization"].startswith("Basic ")
    assert b"client_secret" not in req.body


# -- Taxizer (seed 002) -----------------------------------------------------------------


def taxizer_yaml(mode: str, url: str) -> str:
    if mode == "preset":
        return f"""
routes:
  tax:
    auth:
      preset: taxizer
      client_id: {Taxizer().client_id}
      client_secret: ${{env:SECRET}}
      base_url: {url}/v1/
"""
    return f"""
routes:
  tax:
    upstream: {url}/v1/
    auth:
      type: login
      request:
        url: {url}/v1/Auth/Connect
        json: {{clientId: {Taxizer().client_id}, clientSecret: "${{env:SECRET}}"}}
      response:
        access_token: jwtToken
        expires_at: jwtTokenExpireAtUTC
        refresh_token: refreshToken
        refresh_expires_at: refreshTokenExpireAtUTC
"""


@pytest.mark.parametrize("mode", MODES)
async def test_taxizer_iso_expiry_and_login_again(
    mode: str, fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    clock.set(1_800_000_000.25)  # an instant with a fraction: the ISO expiry has milliseconds
    fake = Taxizer(clock=clock)
    url = await fake_url(fake)
    proxy = await start_proxy(
        taxizer_yaml(mode, url), env={"SECRET": fake.client_secret}, clock=clock
    )
    status, body, _ = await call(http, "PUT", proxy.url + "/tax/Invoices/7", data=b"abc")
    assert status == 200 and body["path"] == "/v1/Invoices/7"
    assert body["body_sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert bearer_of(fake.api_log[-1].headers) == fake.issued[0]
    tok = proxy.routes["tax"].manager.token
    # The ISO expiry says .25, the JWT's exp says the whole second before: the
    # earlier one wins (issue 13), so the token is never sent past either.
    assert tok.expires_at == pytest.approx(1_800_003_600.0, abs=0.001)

    clock.advance(3600)  # no refresh endpoint in the document: log in again
    assert (await call(http, "GET", proxy.url + "/tax/Invoices"))[0] == 200
    assert fake.logins == 2 and fake.token_requests == 2
    assert all(r.status == 200 for r in fake.api_log)


async def test_taxizer_bad_credentials_answer_400(
    fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake = Taxizer(clock=clock)
    url = await fake_url(fake)
    proxy = await start_proxy(taxizer_yaml("preset", url), env={"SECRET": "nope"}, clock=clock)
    status, body, headers = await call(http, "GET", proxy.url + "/tax/Invoices")
    assert status == 502 and headers["X-Authproxy-Error"] == "token_unavailable"
    assert body == {
        "error": {
            "code": "token_unavailable",
            "route": "tax",
            "message": "token endpoint answered 400",
        }
    }
    # Not retried on its own: more requests, still one attempt.
    for _ in range(10):
        assert (await call(http, "GET", proxy.url + "/tax/Invoices"))[0] == 502
    assert fake.token_requests == 1


# -- the B2B JWT API (seed 003) ---------------------------------------------------------


def b2b_yaml(mode: str, url: str) -> str:
    if mode == "preset":
        return f"""
routes:
  b2b:
    upstream: {url}/api/v1/
    auth:
      preset: b2b_jwt
      username: {B2B().username}
      password: ${{env:PASSWORD}}
      base_url: {url}/
"""
    env = """
        access_token: data.access_token
        expires_at: data.access_expires_at
        refresh_token: data.refresh_token
        refresh_expires_at: data.refresh_expires_at"""
    return f"""
routes:
  b2b:
    upstream: {url}/api/v1/
    auth:
      type: login
      request:
        method: POST
        url: {url}/auth/login
        json: {{username: {B2B().username}, password: "${{env:PASSWORD}}"}}
      response:{env}
      refresh:
        method: POST
        url: {url}/auth/refresh
        json: {{refresh_token: "{{refresh_token}}"}}
"""


@pytest.mark.parametrize("mode", MODES)
async def test_b2b_rotating_refresh_never_reused(
    mode: str, fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake = B2B(clock=clock)
    url = await fake_url(fake)
    proxy = await start_proxy(b2b_yaml(mode, url), env={"PASSWORD": fake.password}, clock=clock)
    status, body, _ = await call(http, "GET", proxy.url + "/b2b/products?limit=5")
    assert status == 200 and body["path"] == "/api/v1/products" and body["query"] == "limit=5"

    for _ in range(3):
        clock.advance(3600)
        assert (await call(http, "GET", proxy.url + "/b2b/categories"))[0] == 200
    assert fake.logins == 1 and fake.refreshes == 3
    assert fake.reuse_detections == 0  # each rotated refresh token was used once
    assert all(r.status == 200 for r in fake.token_log + fake.api_log)

    # Past the refresh token's 7 days: log in without trying the refresh.
    clock.advance(8 * 24 * 3600)
    before = fake.token_requests
    assert (await call(http, "GET", proxy.url + "/b2b/categories"))[0] == 200
    assert fake.token_requests == before + 1 and fake.logins == 2


async def test_b2b_revoked_session_logs_in_again(
    fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake = B2B(clock=clock)
    url = await fake_url(fake)
    proxy = await start_proxy(b2b_yaml("preset", url), env={"PASSWORD": fake.password}, clock=clock)
    assert (await call(http, "GET", proxy.url + "/b2b/products"))[0] == 200
    fake.revoke_all(include_refresh=True)
    # The API answers 401; the refresh is refused too; a fresh login, then the replay.
    status, body, _ = await call(http, "POST", proxy.url + "/b2b/orders", data=b'{"n": 1}')
    assert status == 200 and body["body_sha256"] == hashlib.sha256(b'{"n": 1}').hexdigest()
    assert fake.logins == 2
    assert [r.grant for r in fake.token_log] == ["login", "refresh", "login"]
    assert (
        await metric(
            http, proxy.admin_url, "authproxy_unauthorized_retries_total", outcome="replayed"
        )
        == 1
    )


async def test_b2b_error_envelope_code_and_ip_allowlist(
    fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake = B2B(clock=clock, ip_allowlist=["10.9.9.9"])
    url = await fake_url(fake)
    proxy = await start_proxy(b2b_yaml("preset", url), env={"PASSWORD": fake.password}, clock=clock)
    status, body, _ = await call(http, "GET", proxy.url + "/b2b/products")
    assert status == 502
    assert body["error"]["message"] == "token endpoint answered 403 (FORBIDDEN)"
    fake.ip_allowlist = []
    fake2 = B2B(clock=clock, password="other")
    url2 = await fake_url(fake2)
    proxy2 = await start_proxy(b2b_yaml("preset", url2), env={"PASSWORD": "bad"}, clock=clock)
    status, body, _ = await call(http, "GET", proxy2.url + "/b2b/products")
    assert status == 502
    assert body["error"]["message"] == "token endpoint answered 401 (UNAUTHORIZED)"


# -- getpaid (seed 004) -----------------------------------------------------------------


def getpaid_yaml(mode: str, url: str, *, sandbox: bool = False, extra: str = "") -> str:
    if mode == "preset":
        sb = "\n      sandbox: true" if sandbox else ""
        return f"""
routes:
  gp:
    auth:
      preset: getpaid
      client_id: {GetPaid().client_id}
      client_secret: ${{env:SECRET}}
      base_url: {url}/
      token_url: {url}/oauth/token{sb}{extra}
"""
    audience = SANDBOX_AUDIENCE if sandbox else "https://api.getpaid.io"
    return f"""
routes:
  gp:
    upstream: {url}/
    auth:
      type: oauth2_client_credentials
      token_url: {url}/oauth/token
      client_id: {GetPaid().client_id}
      client_secret: ${{env:SECRET}}
      audience: {audience}
      scope: [accounts:read_write, invoices:read_write]
      body: json{extra}
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sandbox", [False, True])
async def test_getpaid_json_client_credentials(
    mode: str,
    sandbox: bool,
    fake_url: Any,
    start_proxy: Any,
    http: aiohttp.ClientSession,
    clock: ManualClock,
) -> None:
    fake = GetPaid(clock=clock, sandbox=sandbox)
    url = await fake_url(fake)
    proxy = await start_proxy(
        getpaid_yaml(mode, url, sandbox=sandbox), env={"SECRET": fake.client_secret}, clock=clock
    )
    payload = os.urandom(5000)
    status, body, _ = await call(http, "POST", proxy.url + "/gp/invoices", data=payload)
    assert status == 200 and body["body_sha256"] == hashlib.sha256(payload).hexdigest()
    req = fake.token_log[0]
    assert req.content_type == "application/json"
    import json

    sent = json.loads(req.body)
    assert sent == {
        "grant_type": "client_credentials",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "audience": fake.audience,
        "scope": "accounts:read_write invoices:read_write",
    }
    clock.advance(3600 - 30)  # inside the refresh window: refreshed in the background
    assert (await call(http, "GET", proxy.url + "/gp/accounts"))[0] == 200
    await until(lambda: fake.token_requests == 2, "the background refresh")
    assert fake.token_requests == 2 and fake.logins == 2


async def test_getpaid_rejects_form_and_wrong_audience(
    fake_url: Any, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    fake = GetPaid(clock=clock)
    url = await fake_url(fake)
    form = getpaid_yaml("generic", url).replace("body: json", "body: form")
    proxy = await start_proxy(form, env={"SECRET": fake.client_secret}, clock=clock)
    status, body, _ = await call(http, "GET", proxy.url + "/gp/invoices")
    assert status == 502
    assert body["error"]["message"] == "token endpoint answered 415 (invalid_request)"

    fake2 = GetPaid(clock=clock, sandbox=True)  # expects the sandbox audience
    url2 = await fake_url(fake2)
    proxy2 = await start_proxy(getpaid_yaml("preset", url2), env={"SECRET": fake2.client_secret})
    status, body, headers = await call(http, "GET", proxy2.url + "/gp/invoices")
    assert status == 502 and headers["X-Authproxy-Error"] == "token_unavailable"
    assert body["error"]["message"] == "token endpoint answered 403 (access_denied)"
    assert fake2.api_requests == 0

    fake3 = GetPaid(clock=clock)
    url3 = await fake_url(fake3)
    proxy3 = await start_proxy(getpaid_yaml("preset", url3), env={"SECRET": "wrong-secret"})
    status, body, _ = await call(http, "GET", proxy3.url + "/gp/invoices")
    assert body["error"]["message"] == "token endpoint answered 401 (invalid_client)"
    assert "wrong-secret" not in str(body)
    for f in (fake, fake2, fake3):
        assert_no_token(str(body), f)


async def test_no_token_in_logs_metrics_or_errors(
    fake_url: Any,
    start_proxy: Any,
    http: aiohttp.ClientSession,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Login, refresh, a 401 replay and a failed refresh, all logged at DEBUG:
    no access or refresh token (nor the password) appears anywhere."""
    caplog.set_level("DEBUG")
    fake = B2B(clock=clock)
    url = await fake_url(fake)
    proxy = await start_proxy(b2b_yaml("preset", url), env={"PASSWORD": fake.password}, clock=clock)
    assert (await call(http, "GET", proxy.url + "/b2b/products"))[0] == 200
    clock.advance(3600)
    assert (await call(http, "GET", proxy.url + "/b2b/products"))[0] == 200
    fake.revoke_all(include_refresh=True)
    assert (await call(http, "GET", proxy.url + "/b2b/products"))[0] == 200
    fake.password = "changed"  # the next login fails: an error body to check too
    clock.advance(10)  # past refused_cooldown: a refused token is replaced again
    fake.revoke_all(include_refresh=True)
    status, body, _ = await call(http, "GET", proxy.url + "/b2b/products")
    assert status == 502
    async with http.get(proxy.admin_url + "/metrics") as r:
        metrics_text = await r.text()
    # two logins (the second after the revoked refresh), one refresh, one failed login
    for grant, outcome, count in (
        ("login", "success", 2),
        ("login_refresh", "success", 1),
        ("login", "error", 1),
    ):
        sample = f'{{grant="{grant}",outcome="{outcome}",route="b2b"}} {count:.1f}'
        assert "authproxy_token_requests_total" + sample in metrics_text
    assert len(fake.issued) >= 6
    assert "token" in caplog.text  # the token events were logged, and captured here
    for text in (caplog.text, metrics_text, str(body)):
        assert_no_token(text, fake)
        assert B2B().password not in text
