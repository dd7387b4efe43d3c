"""The ``login`` flow against a real local token endpoint: templates, response
mapping, every expiry format, refresh and its fallbacks.

The flow is called directly (it is the unit under test), with its real token
client and a real server that records each request and answers what the test
scripted.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web

from proxy import config as configmod
from proxy.clock import ManualClock
from proxy.tokens.flows.client import TokenClient
from proxy.tokens.flows.login import LoginFlow
from proxy.tokens.manager import Token, TokenFetchError
from tests.conftest import serve_app

T0 = 1_800_000_000.0


@dataclass
class Endpoint:
    """A token endpoint answering scripted (status, JSON) pairs, recording requests."""

    url: str = ""
    answers: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    def answer(self, path: str, status: int, body: Any) -> None:
        self.answers.setdefault(path, []).append((status, body))


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    state = Endpoint()

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        state.seen.append((request.method, request.path, dict(request.headers), body))
        queue = state.answers.get(request.path) or [(404, {"error": "not_found"})]
        status, data = queue.pop(0) if len(queue) > 1 else queue[0]
        return web.json_response(data, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner, port = await serve_app(app)
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


def flow(
    text: str, url: str, token_client: TokenClient, clock: ManualClock, **env: str
) -> LoginFlow:
    doc = f"""
routes:
  r:
    upstream: http://127.0.0.1:9/
    auth:
{text.replace("URL", url)}
"""
    cfg = configmod.parse(doc, env)
    auth = cfg.routes[0].auth
    assert isinstance(auth, configmod.LoginAuth)
    return LoginFlow("r", auth, token_client, clock)


BASIC = """
      type: login
      request:
        url: URL/login
        json: {key: "${env:KEY}"}
      response: {access_token: data.token, expires_at: data.exp}
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (T0 + 100, T0 + 100),
        (str(int(T0 + 100)), T0 + 100),
        ((T0 + 100) * 1000, T0 + 100),  # epoch milliseconds
        ("2027-01-15T08:00:00Z", 1800000000.0),
        ("2027-01-15T08:00:00.789Z", 1800000000.789),
        ("2027-01-15T10:00:00+02:00", 1800000000.0),
        ("2027-01-15T08:00:00", 1800000000.0),  # no offset: UTC
    ],
)
async def test_expires_at_formats(
    value: Any, expected: float, endpoint: Endpoint, token_client: Any
) -> None:
    endpoint.answer("/login", 200, {"data": {"token": "tok-1", "exp": value}})
    # An hour before the earliest instant: a token expired on arrival is an error now.
    now = min(expected, T0) - 3600
    tok = await flow(BASIC, endpoint.url, token_client, ManualClock(now), KEY="k").fetch(None)
    assert tok.access_token == "tok-1" and tok.how == "login"
    assert tok.expires_at == pytest.approx(expected, abs=0.001)


@pytest.mark.parametrize("value", [120, "120", 120.0])
async def test_expires_in_number_or_string(
    value: Any, endpoint: Endpoint, token_client: Any
) -> None:
    text = BASIC.replace("expires_at: data.exp", "expires_in: data.ttl")
    endpoint.answer("/login", 200, {"data": {"token": "tok", "ttl": value}})
    tok = await flow(text, endpoint.url, token_client, ManualClock(T0), KEY="k").fetch(None)
    assert tok.expires_at == T0 + 120


async def test_expiry_preference_order(endpoint: Endpoint, token_client: Any) -> None:
    signed = jwt.encode({"exp": int(T0 + 999)}, "k" * 32, algorithm="HS256")
    clock = ManualClock(T0)
    # expires_at wins over the JWT's exp
    endpoint.answer("/login", 200, {"data": {"token": signed, "exp": T0 + 50}})
    assert (
        await flow(BASIC, endpoint.url, token_client, clock, KEY="k").fetch(None)
    ).expires_at == (T0 + 50)
    # unreadable expires_at: the JWT's exp, read unverified
    endpoint.answers.clear()
    endpoint.answer("/login", 200, {"data": {"token": signed, "exp": "soon"}})
    assert (
        await flow(BASIC, endpoint.url, token_client, clock, KEY="k").fetch(None)
    ).expires_at == (T0 + 999)
    # neither: default_ttl
    endpoint.answers.clear()
    endpoint.answer("/login", 200, {"data": {"token": "opaque"}})
    text = BASIC + "      default_ttl: 90s\n"
    assert (
        await flow(text, endpoint.url, token_client, clock, KEY="k").fetch(None)
    ).expires_at == (T0 + 90)


async def test_template_is_plain_replacement_never_format(
    endpoint: Endpoint, token_client: Any
) -> None:
    """Braces in a secret or a JSON body are kept; only the two placeholders change."""
    text = """
      type: login
      request:
        url: URL/login
        headers: {X-Key: "${env:KEY}"}
        form: {secret: "${env:KEY}", grant: "{password}"}
      response: {access_token: token, refresh_token: rt}
      refresh:
        url: URL/refresh
        headers: {Authorization: "Bearer {access_token}", X-Raw: "{0} {refresh_token}"}
        json: {rt: "{refresh_token}", nested: [{keep: "{x}"}]}
"""
    endpoint.answer("/login", 200, {"token": "AT1", "rt": "RT1"})
    endpoint.answer("/refresh", 200, {"token": "AT2", "rt": "RT2"})
    f = flow(text, endpoint.url, token_client, ManualClock(T0), KEY="s{e}c%r{0}t")
    first = await f.fetch(None)
    method, path, headers, body = endpoint.seen[0]
    assert (method, path) == ("POST", "/login")
    assert headers["X-Key"] == "s{e}c%r{0}t"
    assert body == b"secret=s%7Be%7Dc%25r%7B0%7Dt&grant=%7Bpassword%7D"
    second = await f.fetch(first)
    _, path, headers, body = endpoint.seen[1]
    assert path == "/refresh"
    assert headers["Authorization"] == "Bearer AT1" and headers["X-Raw"] == "{0} RT1"
    assert json.loads(body) == {"rt": "RT1", "nested": [{"keep": "{x}"}]}
    assert (second.access_token, second.refresh_token, second.how) == ("AT2", "RT2", "refresh")


REFRESHING = """
      type: login
      request: {url: URL/login, json: {u: x}}
      response:
        access_token: data.access_token
        expires_in: data.expires_in
        refresh_token: data.refresh_token
        refresh_expires_at: data.refresh_expires_at
      refresh:
        url: URL/refresh
        json: {refresh_token: "{refresh_token}"}
        response: {access_token: data.new_token, expires_in: data.expires_in}
"""


def prev(rt: str | None = "RT0", rexp: float | None = T0 + 1000) -> Token:
    return Token("AT0", T0 - 1, refresh_token=rt, refresh_expires_at=rexp, obtained_at=T0 - 100)


async def test_refresh_keeps_refresh_token_when_not_rotated(
    endpoint: Endpoint, token_client: Any
) -> None:
    endpoint.answer("/refresh", 200, {"data": {"new_token": "AT1", "expires_in": 60}})
    tok = await flow(REFRESHING, endpoint.url, token_client, ManualClock(T0)).fetch(prev())
    assert (tok.access_token, tok.refresh_token, tok.refresh_expires_at) == (
        "AT1",
        "RT0",
        T0 + 1000,
    )
    assert tok.expires_at == T0 + 60 and tok.how == "refresh"
    assert [s[1] for s in endpoint.seen] == ["/refresh"]


async def test_refused_refresh_logs_in_again(endpoint: Endpoint, token_client: Any) -> None:
    endpoint.answer("/refresh", 401, {"error": {"code": "UNAUTHORIZED"}})
    endpoint.answer(
        "/login", 200, {"data": {"access_token": "AT9", "refresh_token": "RT9", "expires_in": 60}}
    )
    tok = await flow(REFRESHING, endpoint.url, token_client, ManualClock(T0)).fetch(prev())
    assert (tok.access_token, tok.refresh_token, tok.how) == ("AT9", "RT9", "login")
    assert [s[1] for s in endpoint.seen] == ["/refresh", "/login"]


async def test_expired_refresh_token_logs_in_without_trying(
    endpoint: Endpoint, token_client: Any
) -> None:
    endpoint.answer("/login", 200, {"data": {"access_token": "AT9", "expires_in": 60}})
    f = flow(REFRESHING, endpoint.url, token_client, ManualClock(T0))
    tok = await f.fetch(prev(rexp=T0 - 5))
    assert tok.how == "login" and [s[1] for s in endpoint.seen] == ["/login"]
    await f.fetch(prev(rt=None))  # no refresh token at all: the same
    assert [s[1] for s in endpoint.seen] == ["/login", "/login"]


async def test_failing_refresh_endpoint_backs_off_then_logs_in(
    endpoint: Endpoint, token_client: Any
) -> None:
    """A refresh endpoint that is down is not answered by doubling the load: the
    first failure is raised (the manager backs off); the next attempt, given that
    failure (the manager keeps it, the flow keeps nothing), logs in."""
    endpoint.answer("/refresh", 503, {"error": "temporarily_unavailable"})
    endpoint.answer("/login", 200, {"data": {"access_token": "AT9", "expires_in": 60}})
    f = flow(REFRESHING, endpoint.url, token_client, ManualClock(T0))
    with pytest.raises(TokenFetchError) as info:
        await f.fetch(prev())
    assert info.value.retryable and info.value.status == 503
    assert info.value.message == "refresh endpoint answered 503 (temporarily_unavailable)"
    assert info.value.grant == "login_refresh"
    with pytest.raises(TokenFetchError):  # the same again without it: no state was kept
        await f.fetch(prev())
    tok = await f.fetch(prev(), info.value)
    assert tok.how == "login"
    assert [s[1] for s in endpoint.seen] == ["/refresh", "/refresh", "/refresh", "/login"]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"data": {}}, "token endpoint answer has no access token at 'data.token'"),
        ({"data": {"token": ""}}, "token endpoint answer has no access token at 'data.token'"),
        ({"data": "x"}, "token endpoint answer has no access token at 'data.token'"),
        ([1, 2], "token endpoint answered 200 with JSON that is not an object"),
    ],
)
async def test_answer_without_token(
    answer: Any, message: str, endpoint: Endpoint, token_client: Any
) -> None:
    endpoint.answer("/login", 200, answer)
    with pytest.raises(TokenFetchError) as info:
        await flow(BASIC, endpoint.url, token_client, ManualClock(T0), KEY="k").fetch(None)
    assert info.value.message == message and not info.value.retryable
