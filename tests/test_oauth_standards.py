"""The OAuth standards of issue 13 through the real proxy, each against the strict
fake of tests/fakes/standards.py: client authentication methods (RFC 6749 2.3,
RFC 7523 2.2), the JWT bearer grant (RFC 7523 2.1) and resource indicators
(RFC 8707)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy import config as configmod
from proxy.clock import ManualClock
from tests.fakes import serve
from tests.fakes.standards import JWT_BEARER, Client, Issuer, StandardsServer
from tests.tokenkit import assert_no_token, call, metric

SECRET = "s3cr3t:with spaces&amp-and-long-enough-for-hs256!"


@pytest.fixture
def now_clock() -> ManualClock:
    # Assertions are checked by pyjwt on the real clock: start the manual one there.
    return ManualClock()


@pytest.fixture
async def server(now_clock: ManualClock) -> AsyncIterator[tuple[StandardsServer, str]]:
    fake = StandardsServer(clock=now_clock)
    async with serve(fake) as url:
        yield fake, url


def pem_pair(kind: str, tmp_path: Path) -> tuple[Path, Any]:
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    path = tmp_path / f"{kind}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path, key.public_key()


def cc_yaml(url: str, method: str, extra: str = "") -> str:
    return f"""
routes:
  api:
    upstream: {url}/api/
    auth:
      type: oauth2_client_credentials
      token_url: {url}/token
      client_id: app-1
      client_secret: ${{env:SECRET}}
      client_auth: {method}{extra}
"""


def form_of(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in parse_qsl(body.decode(), keep_blank_values=True):
        out.setdefault(k, []).append(v)
    return out


@pytest.mark.parametrize(
    ("method", "registered"),
    [
        ("client_secret_basic", "client_secret_basic"),
        ("basic", "client_secret_basic"),
        ("client_secret_post", "client_secret_post"),
        ("body", "client_secret_post"),
        ("client_secret_jwt", "client_secret_jwt"),
    ],
)
async def test_secret_client_auth_methods(
    method: str, registered: str, server: Any, start_proxy: Any, now_clock: ManualClock, http: Any
) -> None:
    fake, url = server
    fake.clients["app-1"] = Client("app-1", registered, secret=SECRET)
    proxy = await start_proxy(cc_yaml(url, method), env={"SECRET": SECRET}, clock=now_clock)
    status, body, _ = await call(http, "GET", proxy.url + "/api/things")
    assert status == 200, body
    assert fake.authenticated == [("app-1", registered)]
    form = form_of(fake.token_log[0].body)
    if registered == "client_secret_jwt":
        assert "client_secret" not in form and "authorization" not in fake.token_log[0].headers
        claims = jwt.decode(form["client_assertion"][0], SECRET, algorithms=["HS256"],
                            audience=url + "/token")  # fmt: skip
        assert claims["iss"] == claims["sub"] == "app-1"
        assert claims["exp"] - claims["iat"] <= 60


async def test_private_key_jwt_fresh_jti_per_request_and_kid(
    server: Any, start_proxy: Any, now_clock: ManualClock, http: Any, tmp_path: Path
) -> None:
    fake, url = server
    pem, public = pem_pair("ec", tmp_path)
    fake.clients["app-1"] = Client("app-1", "private_key_jwt", public_key=public, key_id="k1")
    extra = f"\n      private_key: ${{file:{pem}}}\n      key_id: k1"
    text = cc_yaml(url, "private_key_jwt", extra)
    text = text.replace("      client_secret: ${env:SECRET}\n", "")
    proxy = await start_proxy(text, clock=now_clock)
    assert (await call(http, "GET", proxy.url + "/api/a"))[0] == 200
    # A new token (after a revocation; the assertions' exp is checked on real time,
    # so the clock stays): a new assertion, with a new jti.
    fake.revoke_all()
    assert (await call(http, "GET", proxy.url + "/api/a"))[0] == 200
    assert fake.authenticated == [("app-1", "private_key_jwt")] * 2
    assertions = [form_of(r.body)["client_assertion"][0] for r in fake.token_log]
    assert len({jwt.decode(a, options={"verify_signature": False})["jti"] for a in assertions}) == 2
    assert jwt.get_unverified_header(assertions[0]) == {"alg": "ES256", "kid": "k1", "typ": "JWT"}
    assert_no_token(pem.read_text(), fake)


async def test_public_client_none_sends_no_secret(
    server: Any, start_proxy: Any, now_clock: ManualClock, http: Any
) -> None:
    fake, url = server
    fake.clients["app-1"] = Client("app-1", "none")
    text = cc_yaml(url, "none").replace("      client_secret: ${env:SECRET}\n", "")
    proxy = await start_proxy(text, clock=now_clock)
    assert (await call(http, "GET", proxy.url + "/api/a"))[0] == 200
    assert form_of(fake.token_log[0].body)["client_id"] == ["app-1"]
    assert "client_secret" not in form_of(fake.token_log[0].body)


async def test_wrong_method_is_refused_by_the_strict_server(
    server: Any, start_proxy: Any, now_clock: ManualClock, http: Any
) -> None:
    fake, url = server
    fake.clients["app-1"] = Client("app-1", "client_secret_basic", secret=SECRET)
    proxy = await start_proxy(
        cc_yaml(url, "client_secret_post"), env={"SECRET": SECRET}, clock=now_clock
    )
    status, body, headers = await call(http, "GET", proxy.url + "/api/a")
    assert status == 502 and headers["X-Authproxy-Error"] == "token_unavailable"
    assert body["error"]["message"] == "token endpoint answered 401 (invalid_client)"
    assert SECRET not in str(body)


async def test_resource_indicators_on_token_requests(
    server: Any, start_proxy: Any, now_clock: ManualClock, http: Any
) -> None:
    fake, url = server
    fake.clients["app-1"] = Client("app-1", "client_secret_post", secret=SECRET)
    extra = "\n      resource: [https://api.example/, https://other.example/]"
    proxy = await start_proxy(cc_yaml(url, "body", extra), env={"SECRET": SECRET}, clock=now_clock)
    status, body, _ = await call(http, "GET", proxy.url + "/api/a")
    assert status == 200
    assert form_of(fake.token_log[0].body)["resource"] == [
        "https://api.example/", "https://other.example/"
    ]  # fmt: skip
    tok = next(iter(fake.access_tokens.values()))
    assert tok.claims["aud"] == ["https://api.example/", "https://other.example/"]


@pytest.mark.parametrize("bad", ["https://api.example/#frag", "/relative", "[]"])
def test_resource_must_be_absolute_without_fragment(bad: str) -> None:
    text = f"""routes:
  api:
    upstream: http://127.0.0.1:9/
    auth:
      type: oauth2_client_credentials
      token_url: http://127.0.0.1:9/token
      client_id: a
      client_secret: b
      resource: {bad}
"""
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse(text, {})
    (problem,) = err.value.problems
    assert problem.path == "routes.api.auth.resource" and problem.line == 9


async def test_jwt_bearer_grant_with_configured_claims(
    server: Any, start_proxy: Any, now_clock: ManualClock, http: Any, tmp_path: Path
) -> None:
    fake, url = server
    pem, public = pem_pair("rsa", tmp_path)
    fake.issuers["svc@example"] = Issuer(public, subjects={"svc@example"})
    proxy = await start_proxy(
        f"""
routes:
  gov:
    upstream: {url}/api/
    auth:
      type: oauth2_jwt_bearer
      token_url: {url}/token
      private_key: ${{file:{pem}}}
      key_id: rsa-1
      claims: {{iss: svc@example, sub: svc@example, aud: "{url}/", scope: "read write",
               consumer_org: "991825827"}}
      resource: https://api.example/
""",
        clock=now_clock,
    )
    status, _, _ = await call(http, "GET", proxy.url + "/gov/things")
    assert status == 200
    form = form_of(fake.token_log[0].body)
    assert form["grant_type"] == [JWT_BEARER] and form["resource"] == ["https://api.example/"]
    claims = fake.last_grant_claims
    assert claims["scope"] == "read write" and claims["consumer_org"] == "991825827"
    assert claims["exp"] - claims["iat"] == 300 and claims["jti"]
    assert jwt.get_unverified_header(form["assertion"][0])["kid"] == "rsa-1"
    assert (
        await metric(http, proxy.admin_url, "authproxy_token_requests_total", grant="jwt_bearer")
        == 1
    )


def test_jwt_bearer_config_errors(tmp_path: Path) -> None:
    text = """routes:
  gov:
    upstream: http://127.0.0.1:9/
    auth:
      type: oauth2_jwt_bearer
      token_url: http://127.0.0.1:9/token
      private_key: not a key
      claims: {sub: me, jti: fixed}
"""
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse(text, {})
    got = {p.path for p in err.value.problems}
    assert got == {
        "routes.gov.auth.private_key",
        "routes.gov.auth.claims.iss",
        "routes.gov.auth.claims.aud",
        "routes.gov.auth.claims.jti",
    }
    assert "not a key" not in str(err.value)  # a secret's value is never shown


def test_basic_auth_encodes_as_rfc6749() -> None:
    from proxy.tokens.flows.client_auth import basic_auth

    expected = base64.b64encode(b"a%3Ab:c%20d").decode()
    assert basic_auth("a:b", "c d") == f"Basic {expected}"


def test_explain_shows_the_standards_keys_and_masks_the_key(tmp_path: Path) -> None:
    from proxy.config.explain import explain

    pem, _ = pem_pair("ec", tmp_path)
    text = f"""routes:
  api:
    upstream: http://127.0.0.1:9/
    auth:
      type: oauth2_jwt_bearer
      token_url: http://127.0.0.1:9/token
      private_key: ${{file:{pem}}}
      key_id: k1
      claims: {{iss: me, aud: "http://127.0.0.1:9/"}}
      resource: [https://api.example/]
"""
    out = explain(configmod.parse(text, {}))
    assert "type: oauth2_jwt_bearer" in out and "private_key: '***'" in out
    assert "https://api.example/" in out and "key_id: k1" in out
    assert "PRIVATE KEY" not in out and pem.read_text().splitlines()[1] not in out


async def test_tls_client_auth_with_the_routes_client_certificate(
    start_proxy: Any, now_clock: ManualClock, http: Any, tmp_path: Path
) -> None:
    from tests.test_tls import Pki

    pki = Pki(tmp_path)
    fake = StandardsServer(clock=now_clock)
    fake.clients["app-1"] = Client("app-1", "tls_client_auth", tls_subject="client.authproxy.test")
    async with serve(fake, ssl_context=pki.server_context(require_client_cert=True)) as url:
        url = url.replace("127.0.0.1", "localhost")
        text = cc_yaml(url, "tls_client_auth").replace("      client_secret: ${env:SECRET}\n", "")
        text += (
            f"    tls:\n      ca_file: {pki.ca_file}\n      client_cert: {pki.client_cert}\n"
            f"      client_key: {pki.client_key}\n"
        )
        proxy = await start_proxy(text, clock=now_clock)
        status, body, _ = await call(http, "GET", proxy.url + "/api/a")
        assert status == 200, body
    assert fake.authenticated == [("app-1", "tls_client_auth")]
    assert "client_secret" not in form_of(fake.token_log[0].body)


def test_tls_client_auth_needs_a_client_certificate() -> None:
    text = cc_yaml("http://127.0.0.1:9", "tls_client_auth")
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse(text, {"SECRET": "x"})
    assert [p.path for p in err.value.problems] == ["routes.api.auth.client_auth"]
