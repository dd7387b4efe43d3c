"""The OAuth2 flows (client credentials, refresh token) and the shared token-endpoint
rules, against a real local token endpoint that records what it received."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from proxy import config as configmod
from proxy.clock import ManualClock
from proxy.tokens.flows.client_credentials import ClientCredentialsFlow
from proxy.tokens.flows.refresh_token import RefreshTokenFlow
from proxy.tokens.manager import NeedsConsent, Token, TokenFetchError
from tests.conftest import serve_app

T0 = 1_800_000_000.0


@dataclass
class Seen:
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class TokenEndpoint:
    url: str = ""
    status: int = 200
    answer: Any = field(default_factory=lambda: {"access_token": "AT", "expires_in": 3600})
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
async def endpoint() -> AsyncIterator[TokenEndpoint]:
    state = TokenEndpoint()

    async def handle(request: web.Request) -> web.Response:
        state.seen.append(Seen(dict(request.headers), await request.read()))
        if state.raw is not None:
            return web.Response(status=state.status, body=state.raw, headers=state.headers)
        return web.json_response(state.answer, status=state.status, headers=state.headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner, port = await serve_app(app)
    state.url = f"http://127.0.0.1:{port}/oauth/token"
    yield state
    await runner.cleanup()


def auth_of(text: str, **env: str) -> Any:
    doc = f"routes:\n  r:\n    upstream: http://127.0.0.1:9/\n    auth:\n{text}"
    return configmod.parse(doc, env).routes[0].auth


def cc(url: str, extra: str = "") -> str:
    return f"""      type: oauth2_client_credentials
      token_url: {url}
      client_id: my-client
      client_secret: ${{env:SECRET}}
      scope: [read, write]
      audience: https://api.example
{extra}"""


async def test_client_credentials_form_body(endpoint: TokenEndpoint, token_client: Any) -> None:
    auth = auth_of(cc(endpoint.url, "      extra: {resource: r1, n: 5}\n"), SECRET="s3cret")
    tok = await ClientCredentialsFlow("r", auth, token_client, ManualClock(T0)).fetch(None)
    seen = endpoint.seen[0]
    assert seen.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen.form() == {
        "grant_type": "client_credentials",
        "client_id": "my-client",
        "client_secret": "s3cret",
        "scope": "read write",
        "audience": "https://api.example",
        "resource": "r1",
        "n": "5",
    }
    assert tok == Token("AT", T0 + 3600, obtained_at=T0, how="client_credentials")


async def test_client_credentials_json_and_basic(
    endpoint: TokenEndpoint, token_client: Any
) -> None:
    text = cc(endpoint.url, "      body: json\n      client_auth: basic\n")
    auth = auth_of(text, SECRET="p@ss:w rd")
    endpoint.answer = {"access_token": "AT", "expires_in": "60", "token_type": "Bearer"}
    tok = await ClientCredentialsFlow("r", auth, token_client, ManualClock(T0)).fetch(None)
    seen = endpoint.seen[0]
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "audience": "https://api.example",
    }
    # RFC 6749 2.3.1: id and secret are form-encoded before Basic
    expected = base64.b64encode(b"my-client:p%40ss%3Aw%20rd").decode()
    assert seen.headers["Authorization"] == f"Basic {expected}"
    assert tok.expires_at == T0 + 60


async def test_refresh_token_prefers_the_rotated_one(
    endpoint: TokenEndpoint, token_client: Any
) -> None:
    text = f"""      type: oauth2_refresh_token
      token_url: {endpoint.url}
      client_id: c
      client_secret: s
      refresh_token: ${{env:RT}}
"""
    f = RefreshTokenFlow("r", auth_of(text, RT="from-config"), token_client, ManualClock(T0))
    endpoint.answer = {"access_token": "A1", "expires_in": 100, "refresh_token": "rotated-1"}
    first = await f.fetch(None)
    assert endpoint.seen[0].form() == {
        "grant_type": "refresh_token",
        "refresh_token": "from-config",
        "client_id": "c",
        "client_secret": "s",
    }
    assert (first.refresh_token, first.how) == ("rotated-1", "refresh")
    endpoint.answer = {"access_token": "A2", "expires_in": 100}  # no rotation this time
    second = await f.fetch(first)
    assert endpoint.seen[1].form()["refresh_token"] == "rotated-1"
    assert second.refresh_token == "rotated-1"


async def test_refresh_token_missing_needs_consent(
    endpoint: TokenEndpoint, token_client: Any
) -> None:
    text = f"""      type: oauth2_refresh_token
      token_url: {endpoint.url}
      client_id: c
      client_secret: s
"""
    f = RefreshTokenFlow("invoiced", auth_of(text), token_client, ManualClock(T0))
    with pytest.raises(NeedsConsent) as info:
        await f.fetch(None)
    assert "authproxy authorize invoiced" in info.value.message
    assert not info.value.retryable and endpoint.seen == []


# -- the shared rules of proxy/tokens/flows/http.py ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "answer", "message", "retryable"),
    [
        (400, {"error": "invalid_scope", "error_description": "secret-ish"}, "(invalid_scope)", 0),
        (
            401,
            {"error": {"code": "UNAUTHORIZED", "message": "Bad password x"}},
            "(UNAUTHORIZED)",
            0,
        ),
        (403, {"error": "a code with spaces and <html>"}, "answered 403", 0),
        (500, {"error": "server_error"}, "(server_error)", 1),
        (502, "bad gateway", "answered 502", 1),
        (408, {}, "answered 408", 1),
    ],
)
async def test_error_answers(
    status: int,
    answer: Any,
    message: str,
    retryable: int,
    endpoint: TokenEndpoint,
    token_client: Any,
) -> None:
    endpoint.status, endpoint.answer = status, answer
    auth = auth_of(cc(endpoint.url), SECRET="s3cret")
    with pytest.raises(TokenFetchError) as info:
        await ClientCredentialsFlow("r", auth, token_client, ManualClock(T0)).fetch(None)
    err = info.value
    assert err.message.startswith(f"token endpoint answered {status}")
    assert err.message.endswith(message)
    assert err.status == status and err.retryable is bool(retryable)
    for leak in ("secret-ish", "Bad password", "<html>", "s3cret"):
        assert leak not in err.message


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [("120", 120, 120), ("Wed, 21 Oct 2099 07:28:00 GMT", 3600, 3600), ("nonsense", None, None)],
)
async def test_429_retry_after(
    value: str, low: float | None, high: float | None, endpoint: TokenEndpoint, token_client: Any
) -> None:
    endpoint.status, endpoint.answer = 429, {"error": "slow_down"}
    endpoint.headers = {"Retry-After": value}
    auth = auth_of(cc(endpoint.url), SECRET="s")
    with pytest.raises(TokenFetchError) as info:
        await ClientCredentialsFlow("r", auth, token_client, ManualClock(T0)).fetch(None)
    assert info.value.retryable
    if low is None:
        assert info.value.retry_after is None
    else:
        assert info.value.retry_after is not None
        assert low <= info.value.retry_after <= (high or low)


async def test_large_answer_refused_without_content_length(
    endpoint: TokenEndpoint, token_client: Any
) -> None:
    """A chunked answer past 1 MiB is cut off while reading, not buffered whole."""

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(160):  # 10 MiB in 64 KiB chunks
            await resp.write(b"x" * 65536)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/t", huge)
    runner, port = await serve_app(app)
    try:
        auth = auth_of(cc(f"http://127.0.0.1:{port}/t"), SECRET="s")
        with pytest.raises(TokenFetchError) as info:
            await ClientCredentialsFlow("r", auth, token_client, ManualClock(T0)).fetch(None)
        assert info.value.message == "token endpoint answered 200 with more than 1024 KiB; refused"
    finally:
        await runner.cleanup()
