"""The fake providers themselves: each one as strict as its seed document."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import jwt
import pytest
from multidict import CIMultiDictProxy

from proxy.clock import ManualClock
from tests.fakes import B2B, FakeProvider, Fault, GetPaid, Invoiced, InvoiceNg, Taxizer, serve
from tests.fakes.getpaid import SANDBOX_AUDIENCE
from tests.fakes.invoiced import s256

T0 = 1_700_000_000.25


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@contextlib.asynccontextmanager
async def running(
    provider: FakeProvider, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    async with serve(provider, ssl_context=ssl_context) as url, aiohttp.ClientSession() as s:
        yield s, url


async def call(
    s: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """(status, JSON body or raw bytes, headers)."""
    async with s.request(method, url, allow_redirects=False, **kwargs) as r:
        raw = await r.read()
        body: Any = raw
        if r.content_type.endswith("json") and raw:
            body = await r.json(content_type=None)
        return r.status, body, r.headers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


# ---------------------------------------------------------------- invoice.ng (000)


@pytest.mark.asyncio
async def test_invoice_ng_login_and_api_echo(clock: ManualClock) -> None:
    p = InvoiceNg("k-123", clock)
    async with running(p) as (s, url):
        st, body, _ = await call(s, "POST", f"{url}/v1/authenticate", json={"api_key": "k-123"})
        assert st == 200
        assert body["status"] == "ok" and body["type"] == "bearer"
        assert body["expiry"] == int(T0) + 3600
        token = body["token"]
        assert claims(token)["exp"] == body["expiry"] and claims(token)["jti"]
        assert p.logins == 1 and p.token_requests == 1 and p.issued == [token]

        st, echo, _ = await call(
            s, "PUT", f"{url}/v1/invoices/a%2Fb?x=1&y=%20", headers=bearer(token), data=b"hello"
        )
        assert st == 200
        assert echo["method"] == "PUT"
        assert echo["path"] == "/v1/invoices/a%2Fb" and echo["query"] == "x=1&y=%20"
        assert echo["body_len"] == 5
        assert echo["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
        assert echo["headers"]["authorization"] == f"Bearer {token}"
        assert echo["token"] == claims(token)["jti"] != token
        assert p.api_requests == 1 and p.api_log[0].token_id == echo["token"]


@pytest.mark.asyncio
async def test_invoice_ng_login_strictness(clock: ManualClock) -> None:
    p = InvoiceNg("k-123", clock)
    auth = "/v1/authenticate"
    async with running(p) as (s, url):
        st, body, _ = await call(s, "POST", url + auth, data={"api_key": "k-123"})
        assert st == 415 and body["status"] == "error"
        assert (await call(s, "POST", url + auth, json={"api_key": "nope"}))[0] == 401
        assert (await call(s, "POST", url + auth, json={}))[0] == 400
        assert (await call(s, "GET", url + auth))[0] == 405
        assert p.token_requests == 4 and p.logins == 0 and p.issued == []
        assert [r.status for r in p.token_log] == [415, 401, 400, 405]
        assert p.token_log[0].content_type == "application/x-www-form-urlencoded"
        assert p.token_log[0].body == b"api_key=k-123"
        st, body, _ = await call(s, "GET", f"{url}/v1/invoices")
        assert st == 401 and body["status"] == "error"


@pytest.mark.asyncio
async def test_invoice_ng_refresh_invalidates_old_token(clock: ManualClock) -> None:
    p = InvoiceNg("k", clock)
    async with running(p) as (s, url):
        old = (await call(s, "POST", f"{url}/v1/authenticate", json={"api_key": "k"}))[1]["token"]
        clock.advance(10)
        st, body, _ = await call(s, "GET", f"{url}/v1/token/refresh", headers=bearer(old))
        assert st == 200 and body["status"] == "ok" and body["type"] == "bearer"
        new = body["refresh_token"]
        assert new != old and body["expiry"] == int(T0 + 10) + 3600
        assert p.refreshes == 1 and p.token_requests == 2
        assert (await call(s, "GET", f"{url}/v1/x", headers=bearer(old)))[0] == 401
        assert (await call(s, "GET", f"{url}/v1/x", headers=bearer(new)))[0] == 200
        # the invalidated token cannot be refreshed again
        again = await call(s, "GET", f"{url}/v1/token/refresh", headers=bearer(old))
        assert again[0] == 401 and p.refreshes == 1
        assert (await call(s, "POST", f"{url}/v1/token/refresh", headers=bearer(new)))[0] == 405
        assert [t.token for t in p.valid_access_tokens()] == [new]


@pytest.mark.asyncio
async def test_invoice_ng_expiry_and_refresh_window(clock: ManualClock) -> None:
    p = InvoiceNg("k", clock, token_ttl=60, refresh_window=3600)
    async with running(p) as (s, url):
        login = await call(s, "POST", f"{url}/v1/authenticate", json={"api_key": "k"})
        tok = login[1]["token"]
        clock.advance(59)
        assert (await call(s, "GET", f"{url}/v1/x", headers=bearer(tok)))[0] == 200
        clock.advance(1)
        st, body, _ = await call(s, "GET", f"{url}/v1/x", headers=bearer(tok))
        assert st == 401 and "expired" in body["message"]
        # expired but not invalidated: refreshable within the window
        st, body, _ = await call(s, "GET", f"{url}/v1/token/refresh", headers=bearer(tok))
        assert st == 200
        tok2 = body["refresh_token"]
        clock.advance(3600)
        assert (await call(s, "GET", f"{url}/v1/token/refresh", headers=bearer(tok2)))[0] == 401


@pytest.mark.asyncio
async def test_revoke_all_forces_401(clock: ManualClock) -> None:
    p = InvoiceNg("k", clock)
    async with running(p) as (s, url):
        tok = (await call(s, "POST", f"{url}/v1/authenticate", json={"api_key": "k"}))[1]["token"]
        assert p.revoke_all() == 1
        assert (await call(s, "GET", f"{url}/v1/x", headers=bearer(tok)))[0] == 401
        assert (await call(s, "GET", f"{url}/v1/token/refresh", headers=bearer(tok)))[0] == 401
        assert p.valid_access_tokens() == []


# ---------------------------------------------------------------- invoiced (001)

REDIRECT = "http://127.0.0.1:9999/cb"


async def consent(
    s: aiohttp.ClientSession, p: Invoiced, **kwargs: Any
) -> tuple[int, dict[str, list[str]]]:
    st, _, headers = await call(s, "GET", p.authorize_url(**kwargs))
    location = headers.get("Location", "")
    return st, parse_qs(urlsplit(location).query)


@pytest.mark.asyncio
async def test_invoiced_code_flow_pkce_and_rotation(clock: ManualClock) -> None:
    p = Invoiced("cid", "csecret", REDIRECT, clock)
    token_url = ""
    async with running(p) as (s, url):
        token_url = f"{url}/oauth/access_token"
        verifier = secrets.token_urlsafe(48)
        st, q = await consent(s, p, state="st-1", code_challenge=s256(verifier))
        assert st == 302 and q["state"] == ["st-1"]
        code = q["code"][0]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": "cid",
            "client_secret": "csecret",
            "code_verifier": verifier,
        }
        st, body, _ = await call(s, "POST", token_url, json=form)
        assert st == 400 and body["error"] == "invalid_request"
        bad_pkce = {**form, "code_verifier": "x" * 50}
        assert (await call(s, "POST", token_url, data=bad_pkce))[1]["error"] == "invalid_grant"
        # the failed attempt did not consume the code
        st, body, headers = await call(s, "POST", token_url, data=form)
        assert st == 200, body
        assert body["token_type"] == "bearer" and body["expires_in"] == 3600
        assert headers["Cache-Control"] == "no-store"
        assert claims(body["access_token"])["aud"] == "cid"
        access, refresh = body["access_token"], body["refresh_token"]
        assert p.code_exchanges == 1 and p.logins == 1
        assert (await call(s, "GET", f"{url}/invoices", headers=bearer(access)))[0] == 200

        # refresh rotates; the used refresh token is then invalid_grant
        rform = {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": "cid",
            "client_secret": "csecret",
        }
        st, body, _ = await call(s, "POST", token_url, data=rform)
        assert st == 200 and body["refresh_token"] != refresh
        st, body2, _ = await call(s, "POST", token_url, data=rform)
        assert st == 400 and body2["error"] == "invalid_grant"
        assert p.refreshes == 1

        # bad client
        st, body, _ = await call(s, "POST", token_url, data={**rform, "client_secret": "x"})
        assert st == 401 and body["error"] == "invalid_client"

        # code is single use; reusing it revokes what it gave
        st, body, _ = await call(s, "POST", token_url, data=form)
        assert st == 400 and body["error"] == "invalid_grant"
        assert (await call(s, "GET", f"{url}/invoices", headers=bearer(access)))[0] == 401
        assert p.token_requests == 7


@pytest.mark.asyncio
async def test_invoiced_authorize_strictness(clock: ManualClock) -> None:
    p = Invoiced("cid", "csecret", REDIRECT, clock)
    async with running(p) as (s, url):
        st, _, headers = await call(s, "GET", p.authorize_url(redirect_uri="http://evil/cb"))
        assert st == 400 and "Location" not in headers
        p.deny_consent = True
        st, q = await consent(s, p, state="z")
        assert st == 302 and q == {"error": ["access_denied"], "state": ["z"]}
        p.deny_consent = False
        st, q = await consent(s, p, scope="admin")
        assert q["error"] == ["invalid_scope"]
        st, q = await consent(s, p, scope="read")
        code = q["code"][0]
        token_url = f"{url}/oauth/access_token"
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT + "x",
            "client_id": "cid",
            "client_secret": "csecret",
        }
        assert (await call(s, "POST", token_url, data=form))[1]["error"] == "invalid_grant"
        clock.advance(601)
        form["redirect_uri"] = REDIRECT
        assert (await call(s, "POST", token_url, data=form))[1]["error"] == "invalid_grant"
        assert p.authorizations == 4 and p.token_requests == 2 and p.logins == 0


@pytest.mark.asyncio
async def test_invoiced_granted_refresh_token_and_no_rotation(clock: ManualClock) -> None:
    p = Invoiced("cid", "csecret", REDIRECT, clock, rotate_refresh=False)
    refresh = p.grant_refresh_token()
    assert refresh in p.issued
    rform = {
        "grant_type": "refresh_token",
        "refresh_token": refresh,
        "client_id": "cid",
        "client_secret": "csecret",
    }
    async with running(p) as (s, url):
        for _ in range(2):
            st, body, _ = await call(s, "POST", f"{url}/oauth/access_token", data=rform)
            assert st == 200 and body["refresh_token"] == refresh
        tok = body["access_token"]
        clock.advance(3600)
        st, body, _ = await call(s, "GET", f"{url}/customers", headers=bearer(tok))
        assert st == 401 and body["type"] == "authentication_error"


# ---------------------------------------------------------------- taxizer (002)


@pytest.mark.asyncio
async def test_taxizer_connect(clock: ManualClock) -> None:
    p = Taxizer("id", "secret", clock)
    async with running(p) as (s, url):
        connect = f"{url}/v1/Auth/Connect"
        st, body, _ = await call(s, "POST", connect, json={"clientId": "id", "clientSecret": "x"})
        assert st == 400
        assert (await call(s, "POST", connect, json={"clientId": "id"}))[0] == 400
        form = {"clientId": "id", "clientSecret": "secret"}
        assert (await call(s, "POST", connect, data=form))[0] == 415
        st, body, _ = await call(
            s, "POST", connect, json={"clientId": "id", "clientSecret": "secret"}
        )
        assert st == 200
        assert set(body) == {
            "appId", "appName", "accountId", "accountName", "username", "jwtToken",
            "jwtTokenExpireAtUTC", "refreshToken", "refreshTokenExpireAtUTC",
        }  # fmt: skip
        iso = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
        assert re.match(iso, body["jwtTokenExpireAtUTC"])
        assert re.match(iso, body["refreshTokenExpireAtUTC"])
        expires = datetime.fromisoformat(body["jwtTokenExpireAtUTC"]).timestamp()
        assert abs(expires - (T0 + 3600)) < 0.001
        tok = body["jwtToken"]
        assert tok in p.issued and body["refreshToken"] in p.issued
        assert p.logins == 1 and p.token_requests == 4
        assert (await call(s, "GET", f"{url}/v1/Invoices", headers=bearer(tok)))[0] == 200
        clock.advance(3600)
        st, raw, headers = await call(s, "GET", f"{url}/v1/Invoices", headers=bearer(tok))
        assert st == 401 and raw == b"" and headers["WWW-Authenticate"].startswith("Bearer")
        # no refresh endpoint exists: anything else is the protected API
        refresh = {"refreshToken": body["refreshToken"]}
        assert (await call(s, "POST", f"{url}/v1/Auth/Refresh", json=refresh))[0] == 401
        assert (await call(s, "POST", f"{url}/v1/auth/connect", json=form))[0] == 401
        assert p.token_requests == 4


# ---------------------------------------------------------------- b2b (003)


@pytest.mark.asyncio
async def test_b2b_rotation_and_reuse_revokes_family(clock: ManualClock) -> None:
    p = B2B("u", "pw", clock)
    async with running(p) as (s, url):
        st, body, _ = await call(
            s, "POST", f"{url}/auth/login", json={"username": "u", "password": "pw"}
        )
        assert st == 200 and body["success"] is True
        d = body["data"]
        assert d["client_id"] == 123456
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", d["access_expires_at"])
        exp = datetime.fromisoformat(d["access_expires_at"]).timestamp()
        assert exp == int(T0) + 3600
        rexp = datetime.fromisoformat(d["refresh_expires_at"]).timestamp()
        assert rexp == int(T0) + 7 * 86400
        r1, a1 = d["refresh_token"], d["access_token"]
        assert (await call(s, "GET", f"{url}/api/v1/products", headers=bearer(a1)))[0] == 200
        # an access token is not a refresh token
        st, body, _ = await call(s, "POST", f"{url}/auth/refresh", json={"refresh_token": a1})
        assert st == 401 and body["error"]["code"] == "UNAUTHORIZED"

        st, body, _ = await call(s, "POST", f"{url}/auth/refresh", json={"refresh_token": r1})
        assert st == 200
        r2, a2 = body["data"]["refresh_token"], body["data"]["access_token"]
        assert r2 != r1 and a2 != a1 and p.refreshes == 1
        # reuse of r1: rejected, and the whole family (r2, a1, a2) is revoked
        st, body, _ = await call(s, "POST", f"{url}/auth/refresh", json={"refresh_token": r1})
        assert st == 401 and body["error"] == {
            "name": "UnauthorizedError",
            "code": "UNAUTHORIZED",
            "message": body["error"]["message"],
        }
        assert p.reuse_detections == 1
        assert (await call(s, "POST", f"{url}/auth/refresh", json={"refresh_token": r2}))[0] == 401
        assert (await call(s, "GET", f"{url}/api/v1/products", headers=bearer(a2)))[0] == 401
        assert p.refreshes == 1


@pytest.mark.asyncio
async def test_b2b_errors_revoke_expiry_and_allowlist(clock: ManualClock) -> None:
    p = B2B("u", "pw", clock, access_ttl=100, refresh_ttl=1000)
    creds = {"username": "u", "password": "pw"}
    async with running(p) as (s, url):
        login = f"{url}/auth/login"

        async def code_of(**kw: Any) -> tuple[int, str]:
            st, body, _ = await call(s, "POST", login, **kw)
            return st, body["error"]["code"] if st != 200 else "OK"

        assert await code_of(json={"username": "u"}) == (400, "VALIDATION_FAILURE")
        bad_json = {"data": b"{nope", "headers": {"Content-Type": "application/json"}}
        assert await code_of(**bad_json) == (400, "SYNTAX_ERROR")
        assert await code_of(json={"username": "u", "password": "x"}) == (401, "UNAUTHORIZED")
        assert await code_of(data=creds) == (400, "VALIDATION_FAILURE")

        p.ip_allowlist = ["10.0.0.0/8"]
        assert await code_of(json=creds) == (403, "FORBIDDEN")
        p.ip_allowlist = ["10.0.0.0/8", "127.0.0.1"]
        st, body, _ = await call(s, "POST", login, json=creds)
        d = body["data"]
        p.ip_allowlist = ["192.0.2.1"]
        st, body, _ = await call(s, "GET", f"{url}/api/v1/x", headers=bearer(d["access_token"]))
        assert st == 403 and body["error"]["code"] == "FORBIDDEN"
        refresh_body = {"refresh_token": d["refresh_token"]}
        st, body, _ = await call(s, "POST", f"{url}/auth/refresh", json=refresh_body)
        assert st == 403 and p.forbidden == 3
        p.ip_allowlist = []

        st, body, _ = await call(s, "GET", f"{url}/other", headers=bearer(d["access_token"]))
        assert st == 404 and body["error"]["code"] == "NOT_FOUND"
        clock.advance(100)
        assert (await call(s, "GET", f"{url}/api/v1/x", headers=bearer(d["access_token"])))[
            0
        ] == 401
        st, body, _ = await call(s, "POST", f"{url}/auth/revoke", json=refresh_body)
        assert st == 200 and body == {"success": True, "data": {"revoked": True}}
        assert (await call(s, "POST", f"{url}/auth/refresh", json=refresh_body))[0] == 401

        st, body, _ = await call(s, "POST", login, json=creds)
        clock.advance(1000)
        late = {"refresh_token": body["data"]["refresh_token"]}
        assert (await call(s, "POST", f"{url}/auth/refresh", json=late))[0] == 401


@pytest.mark.asyncio
async def test_b2b_revoke_all_with_refresh_tokens(clock: ManualClock) -> None:
    p = B2B("u", "pw", clock)
    async with running(p) as (s, url):
        creds = {"username": "u", "password": "pw"}
        d = (await call(s, "POST", f"{url}/auth/login", json=creds))[1]["data"]
        assert p.issued == [d["access_token"], d["refresh_token"]]
        assert p.revoke_all(include_refresh=True) == 1
        assert (await call(s, "GET", f"{url}/api/v1/x", headers=bearer(d["access_token"])))[
            0
        ] == 401
        refresh = {"refresh_token": d["refresh_token"]}
        assert (await call(s, "POST", f"{url}/auth/refresh", json=refresh))[0] == 401


# ---------------------------------------------------------------- getpaid (004)


GP_BODY = {
    "client_id": "gid",
    "client_secret": "gsecret",
    "audience": "https://api.getpaid.io",
    "grant_type": "client_credentials",
    "scope": "accounts:read_write invoices:read_write",
}


@pytest.mark.asyncio
async def test_getpaid_client_credentials(clock: ManualClock) -> None:
    p = GetPaid("gid", "gsecret", clock)
    async with running(p) as (s, url):
        tok_url = f"{url}/oauth/token"
        st, body, _ = await call(s, "POST", tok_url, data=GP_BODY)
        assert st == 415 and body["error"] == "invalid_request"
        wrong_aud = {**GP_BODY, "audience": SANDBOX_AUDIENCE}
        st, body, _ = await call(s, "POST", tok_url, json=wrong_aud)
        assert st == 403 and body["error"] == "access_denied" and body["error_description"]
        st, body, _ = await call(s, "POST", tok_url, json={**GP_BODY, "client_secret": "no"})
        assert st == 401 and body["error"] == "invalid_client"
        st, body, _ = await call(s, "POST", tok_url, json={**GP_BODY, "grant_type": "password"})
        assert st == 400 and body["error"] == "unsupported_grant_type"
        st, body, _ = await call(s, "POST", tok_url, json=GP_BODY)
        assert st == 200
        assert body == {
            "access_token": body["access_token"],
            "token_type": "bearer",
            "expires_in": 3600,
        }
        c = claims(body["access_token"])
        assert c["aud"] == "https://api.getpaid.io" and c["scope"] == GP_BODY["scope"]
        tok = body["access_token"]
        assert p.logins == 1 and p.token_requests == 5
        assert (await call(s, "GET", f"{url}/accounts", headers=bearer(tok)))[0] == 200
        # the API checks aud: a token for another audience is refused
        p.audience = SANDBOX_AUDIENCE
        st, body, _ = await call(s, "GET", f"{url}/accounts", headers=bearer(tok))
        assert st == 401 and body["error"] == "invalid_token"
        p.audience = "https://api.getpaid.io"
        clock.advance(3600)
        assert (await call(s, "GET", f"{url}/accounts", headers=bearer(tok)))[0] == 401


@pytest.mark.asyncio
async def test_getpaid_sandbox_and_scope(clock: ManualClock) -> None:
    p = GetPaid("gid", "gsecret", clock, sandbox=True, required_scope="invoices:read_write")
    assert p.audience == SANDBOX_AUDIENCE
    async with running(p) as (s, url):
        req = {**GP_BODY, "audience": SANDBOX_AUDIENCE, "scope": "accounts:read_write"}
        tok = (await call(s, "POST", f"{url}/oauth/token", json=req))[1]["access_token"]
        st, body, _ = await call(s, "GET", f"{url}/invoices", headers=bearer(tok))
        assert st == 403 and body["error"] == "insufficient_scope"


# ---------------------------------------------------------------- faults, TLS


@pytest.mark.asyncio
async def test_token_faults(clock: ManualClock) -> None:
    p = GetPaid("gid", "gsecret", clock)
    async with running(p) as (s, url):
        tok_url = f"{url}/oauth/token"
        p.faults = [
            Fault(status=500, body=b"<h1>down</h1>"),
            Fault(reset=True),
            Fault(status=None, delay=0.2),
            Fault(status=200, size=10 * 1024 * 1024, content_type="application/json"),
            Fault(status=503, body=b"{}", content_type="application/json",
                  headers={"Retry-After": "7"}),
        ]  # fmt: skip
        st, raw, headers = await call(s, "POST", tok_url, json=GP_BODY)
        assert st == 500 and raw == b"<h1>down</h1>" and headers["Content-Type"] == "text/html"
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(s, "POST", tok_url, json=GP_BODY)
        started = time.monotonic()
        st, body, _ = await call(s, "POST", tok_url, json=GP_BODY)
        assert st == 200 and body["access_token"] and time.monotonic() - started >= 0.2
        async with s.post(tok_url, json=GP_BODY) as r:
            assert r.status == 200 and r.content_length == 10 * 1024 * 1024
            total = 0
            async for chunk in r.content.iter_chunked(1 << 20):
                total += len(chunk)
            assert total == 10 * 1024 * 1024
        st, _, headers = await call(s, "POST", tok_url, json=GP_BODY)
        assert st == 503 and headers["Retry-After"] == "7"
        assert (await call(s, "POST", tok_url, json=GP_BODY))[0] == 200
        assert p.faults == [] and p.token_requests == 6 and p.logins == 2
        assert [r.status for r in p.token_log] == [500, None, 200, 200, 503, 200]

        p.always_fault = Fault(status=502)
        for _ in range(3):
            assert (await call(s, "POST", tok_url, json=GP_BODY))[0] == 502
        p.always_fault = None
        assert p.token_requests == 9 and p.logins == 2


@pytest.mark.asyncio
async def test_api_faults_and_large_upload(clock: ManualClock) -> None:
    p = InvoiceNg("k", clock)
    async with running(p) as (s, url):
        tok = (await call(s, "POST", f"{url}/v1/authenticate", json={"api_key": "k"}))[1]["token"]
        p.api_faults = [Fault(status=502), Fault(reset=True)]
        assert (await call(s, "GET", f"{url}/v1/a", headers=bearer(tok)))[0] == 502
        with pytest.raises(aiohttp.ClientConnectionError):
            # POST: aiohttp's client silently retries an idempotent request once
            # when a reused keep-alive connection drops
            await call(s, "POST", f"{url}/v1/a", headers=bearer(tok))
        payload = secrets.token_bytes(3 * 1024 * 1024)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(payload), 256 * 1024):
                yield payload[i : i + 256 * 1024]

        st, echo, _ = await call(s, "POST", f"{url}/v1/up", headers=bearer(tok), data=chunks())
        assert st == 200 and echo["body_len"] == len(payload)
        assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()
        assert p.api_requests == 3 and p.token_requests == 1
        assert [r.status for r in p.api_log] == [502, None, 200]


@pytest.mark.asyncio
async def test_single_flight_is_observable_with_a_slow_endpoint(clock: ManualClock) -> None:
    p = InvoiceNg("k", clock)
    p.always_fault = Fault(status=None, delay=0.1)
    async with running(p) as (s, url):
        results = await asyncio.gather(
            *(call(s, "POST", f"{url}/v1/authenticate", json={"api_key": "k"}) for _ in range(5))
        )
        assert all(r[0] == 200 for r in results)
        assert p.token_requests == 5 and p.logins == 5
        assert len({r[1]["token"] for r in results}) == 5  # every token is unique


@pytest.mark.asyncio
async def test_tls(clock: ManualClock) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    p = Taxizer("id", "secret", clock)
    async with serve(p, ssl_context=server_ctx) as url:
        assert url.startswith("https://127.0.0.1:")
        conn = aiohttp.TCPConnector(ssl=client_ctx)
        async with aiohttp.ClientSession(connector=conn) as s:
            creds = {"clientId": "id", "clientSecret": "secret"}
            st, body, _ = await call(s, "POST", f"{url}/v1/Auth/Connect", json=creds)
            assert st == 200 and body["jwtToken"]
