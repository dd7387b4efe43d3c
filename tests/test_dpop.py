"""DPoP (RFC 9449) through the real proxy, against the strict fake of
tests/fakes/standards.py: proofs on token requests and on every forwarded
request, nonces at both servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from proxy.clock import ManualClock
from tests.fakes import serve
from tests.fakes.standards import Client, StandardsServer
from tests.tokenkit import assert_no_token, call, metric


@pytest.fixture
async def server() -> AsyncIterator[tuple[StandardsServer, str]]:
    # Proofs carry iat on the real clock's scale: start the manual clock there.
    fake = StandardsServer(clock=ManualClock())
    fake.clients["app-1"] = Client("app-1", "client_secret_post", secret="app-1-secret")
    async with serve(fake) as url:
        yield fake, url


def dpop_yaml(url: str) -> str:
    return f"""
routes:
  api:
    upstream: {url}/api/
    auth:
      type: oauth2_client_credentials
      token_url: {url}/token
      client_id: app-1
      client_secret: app-1-secret
      dpop: true
"""


async def test_dpop_proofs_on_token_request_and_every_forwarded_request(
    server: Any, start_proxy: Any, http: Any
) -> None:
    fake, url = server
    proxy = await start_proxy(dpop_yaml(url), clock=fake.clock)
    for path in ("/api/a?x=1", "/api/b"):
        status, body, _ = await call(http, "POST", proxy.url + path, data=b"hello")
        assert status == 200 and body["ok"] is True and body["length"] == 5, body
    assert fake.token_requests == 1 and fake.dpop_problems == []
    token_proof, *api_proofs = fake.dpop_proofs
    assert token_proof["htm"] == "POST" and token_proof["htu"] == url + "/token"
    assert "ath" not in token_proof
    assert [p["htu"] for p in api_proofs] == [url + "/api/a", url + "/api/b"]
    assert all(p["ath"] for p in api_proofs)
    assert len({p["jti"] for p in fake.dpop_proofs}) == 3  # a fresh proof each time
    sent = fake.api_log[-1].headers
    assert sent["authorization"].startswith("DPoP ")
    header = jwt.get_unverified_header(sent["dpop"])
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256" and "d" not in header["jwk"]
    token = next(iter(fake.access_tokens.values()))
    assert token.claims["cnf"]["jkt"]  # bound to the proxy's key


async def test_dpop_nonces_at_the_token_endpoint_and_the_api(
    server: Any, start_proxy: Any, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = server
    fake.rotate_nonces()
    proxy = await start_proxy(dpop_yaml(url), clock=fake.clock)
    status, body, _ = await call(http, "GET", proxy.url + "/api/a")
    assert status == 200, body
    # 400 use_dpop_nonce, then the same request with the nonce
    assert [r.status for r in fake.token_log] == [400, 200]
    assert fake.dpop_proofs[1]["nonce"] == fake.token_nonce
    # the API's 401 nonce challenge: sent again once, same token, not invalidated
    assert [r.status for r in fake.api_log] == [401, 200]
    assert fake.token_requests == 2
    assert fake.dpop_proofs[-1]["nonce"] == fake.api_nonce
    admin = proxy.admin_url
    assert await metric(http, admin, "authproxy_token_requests_total", outcome="error") == 1
    assert await metric(http, admin, "authproxy_token_requests_total", outcome="success") == 1
    # the next request uses the kept nonce at once
    assert (await call(http, "GET", proxy.url + "/api/b"))[0] == 200
    assert fake.api_log[-1].status == 200 and len(fake.api_log) == 3
    assert_no_token(caplog.text, fake)
