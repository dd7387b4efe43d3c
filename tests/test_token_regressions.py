"""Issue 13's defects, each a named regression test through the real proxy.

Every test here failed on the code before the fix (checked against /work/base):
the comment above each says what the old code did.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import jwt
import pytest

from proxy import config as configmod
from proxy.app import create_app
from proxy.clock import ManualClock
from proxy.tokens.flows.client_credentials import ClientCredentialsFlow
from tests.fakes import B2B, Fault, GetPaid, Invoiced, serve
from tests.test_flow_oauth2 import TokenEndpoint, auth_of, cc, endpoint  # noqa: F401
from tests.test_tokens import wait_for, yaml_for
from tests.tokenkit import call, metric
from tests.waiting import managers_idle

REFUSED = Fault(
    status=401, body=b'{"error": "invalid_token"}', content_type="application/json",
    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
)  # fmt: skip


async def token_requests_metric(http: Any, admin_url: str, **labels: str) -> float:
    return await metric(http, admin_url, "authproxy_token_requests_total", **labels)


# -- 1. refused fresh tokens ----------------------------------------------------------------


async def test_refused_fresh_token_is_not_replaced_for_every_request(
    start_proxy: Any, clock: ManualClock, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Old code: 30 sequential requests -> 31 token requests (one per 401).
    fake = GetPaid(clock=clock)
    async with serve(fake) as url:
        proxy = await start_proxy(yaml_for(url), clock=clock)
        fake.always_api_fault = REFUSED  # the upstream refuses every token
        for _ in range(30):
            status, body, headers = await call(http, "GET", proxy.url + "/gp/a")
            assert status == 401 and "X-Authproxy-Error" not in headers
            assert body == {"error": "invalid_token"}  # the upstream's answer, as is
        # the first token, and one replacement; then the cooldown holds
        assert fake.token_requests == 2
        refused_fresh = await metric(
            http, proxy.admin_url, "authproxy_unauthorized_retries_total",
            route="gp", outcome="refused_fresh",
        )  # fmt: skip
        assert refused_fresh == 29
        # Concurrent 401s alike: no token request inside the cooldown.
        results = await asyncio.gather(*(call(http, "GET", proxy.url + "/gp/b") for _ in range(40)))
        assert {r[0] for r in results} == {401}
        assert fake.token_requests == 2
        lines = [r for r in caplog.records if "refuses fresh tokens" in r.getMessage()]
        assert len(lines) == 1  # logged once per episode, not per request
        assert lines[0].levelno == logging.WARNING

        # After the (jittered, at most 1.2 x 5 s) cooldown, one more try; still refused.
        clock.advance(6.1)
        results = await asyncio.gather(*(call(http, "GET", proxy.url + "/gp/c") for _ in range(20)))
        assert {r[0] for r in results} == {401}
        assert fake.token_requests == 3
        assert len([r for r in caplog.records if "refuses fresh" in r.getMessage()]) == 1

        # The upstream heals: the next token works, nothing is stuck.
        fake.always_api_fault = None
        clock.advance(6.1)
        assert (await call(http, "GET", proxy.url + "/gp/d"))[0] == 200


async def test_refused_fresh_on_a_refresh_token_route_rotates_once_per_cooldown(
    start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    # Old code: 15 requests -> 15 refresh-token rotations.
    fake = Invoiced(clock=clock)
    async with serve(fake) as url:
        env = {"SECRET": fake.client_secret, "RT": fake.grant_refresh_token()}
        proxy = await start_proxy(
            f"""
routes:
  invd:
    upstream: {url}/
    auth:
      type: oauth2_refresh_token
      token_url: {url}/oauth/access_token
      client_id: {fake.client_id}
      client_secret: ${{env:SECRET}}
      refresh_token: ${{env:RT}}
""",
            env=env,
            clock=clock,
        )
        fake.always_api_fault = REFUSED
        for _ in range(15):
            clock.advance(0.3)  # 4.5 s: inside the default 5 s cooldown
            assert (await call(http, "GET", proxy.url + "/invd/x"))[0] == 401
        assert fake.refreshes == 2  # the first token and one replacement


# -- 2. the refresh window opens before the token stops being sent ------------------------


async def test_refresh_window_opens_before_the_send_margin_with_refresh_before_1s(
    start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    # Old code: with refresh_before: 1s the window opened when the token stopped
    # being sent; a request then waited for the whole (0.6 s) token fetch.
    fake = GetPaid(clock=clock)
    async with serve(fake) as url:
        proxy = await start_proxy(yaml_for(url, extra="\n    refresh_before: 1s"), clock=clock)
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
        manager = proxy.routes["gp"].manager
        expires_at = manager.token.expires_at
        fake.always_fault = Fault(status=None, delay=0.4)  # slow, but under token_timeout
        clock.set(expires_at - 30)
        while clock.time() < expires_at - 0.5:
            started = time.monotonic()
            assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
            assert time.monotonic() - started < 0.3, f"waited at {expires_at - clock.time()}s"
            if fake.token_requests == 2:
                break  # the background refresh started while the token was usable
            clock.advance(0.25)
        assert fake.token_requests == 2
        await wait_for(lambda: manager.token.expires_at > expires_at)


async def test_long_lived_token_stops_being_sent_10s_before_expiry(
    start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    # Old code: a 1 s margin whatever the lifetime (golang/oauth2 uses 10 s).
    fake = GetPaid(clock=clock)
    async with serve(fake) as url:
        proxy = await start_proxy(yaml_for(url), clock=clock)
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
        tok = proxy.routes["gp"].manager.token
        assert tok.usable(tok.expires_at - 10.01) and not tok.usable(tok.expires_at - 9.99)


async def test_expires_in_and_jwt_exp_the_earlier_wins(
    endpoint: TokenEndpoint,  # noqa: F811
    token_client: Any,
) -> None:
    # Old code: expires_in always won, a JWT exp 10 minutes earlier was ignored.
    t0 = 1_800_000_000.0
    access = jwt.encode({"exp": int(t0 + 600)}, "k" * 32, algorithm="HS256")
    endpoint.answer = {"access_token": access, "expires_in": 3600}
    auth = auth_of(cc(endpoint.url), SECRET="s")
    tok = await ClientCredentialsFlow("r", auth, token_client, ManualClock(t0)).fetch(None)
    assert tok.expires_at == t0 + 600
    access = jwt.encode({"exp": int(t0 + 7200)}, "k" * 32, algorithm="HS256")
    endpoint.answer = {"access_token": access, "expires_in": 3600}
    tok = await ClientCredentialsFlow("r", auth, token_client, ManualClock(t0)).fetch(None)
    assert tok.expires_at == t0 + 3600


# -- 3. every request to a token endpoint counted once ------------------------------------


async def test_token_requests_metric_counts_requests_not_fetches(
    start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    # Old code: a refused refresh followed by a login counted 1, the provider saw 2.
    fake = B2B(clock=clock)
    async with serve(fake) as url:
        proxy = await start_proxy(
            f"""
routes:
  b2b:
    upstream: {url}/api/v1/
    auth: {{preset: b2b_jwt, username: {fake.username}, password: "${{env:PW}}",
            base_url: "{url}/"}}
""",
            env={"PW": fake.password},
            clock=clock,
        )
        assert (await call(http, "GET", proxy.url + "/b2b/products"))[0] == 200
        fake.revoke_all(include_refresh=True)  # the refresh is refused, then a login
        assert (await call(http, "GET", proxy.url + "/b2b/products"))[0] == 200
        assert fake.token_requests == 3
        admin = proxy.admin_url
        assert await token_requests_metric(http, admin, route="b2b") == fake.token_requests
        assert await token_requests_metric(http, admin, grant="login_refresh", outcome="error") == 1
        assert await token_requests_metric(http, admin, grant="login", outcome="success") == 2


# -- 4. secrets that are not what they look like -------------------------------------------


@pytest.mark.parametrize("ref", ["${vault:secret/api}", "${ENV:API_KEY}", "x${secret}y", "${}"])
def test_unknown_secret_reference_is_a_config_error(ref: str) -> None:
    # Old code: taken as literal text and sent upstream.
    text = f"""routes:
  api:
    upstream: http://127.0.0.1:9/
    auth:
      type: static
      value: "{ref}"
"""
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse(text, {"API_KEY": "k"})
    (problem,) = err.value.problems
    assert problem.path == "routes.api.auth.value" and problem.line == 6
    assert "unknown secret reference" in problem.message


def test_empty_env_and_empty_file_refused_unless_allowed(tmp_path: Any) -> None:
    # Old code: an empty variable or file became an empty credential.
    empty = tmp_path / "secret"
    empty.write_text("\n")
    text = f"""routes:
  a:
    upstream: http://127.0.0.1:9/
    auth: {{type: static, value: "${{env:EMPTY}}"}}
  b:
    upstream: http://127.0.0.1:9/
    auth: {{type: static, value: "${{file:{empty}}}"}}
"""
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse(text, {"EMPTY": ""})
    got = {(p.path, p.line) for p in err.value.problems}
    assert got == {("routes.a.auth.value", 4), ("routes.b.auth.value", 7)}
    assert all("is empty" in p.message for p in err.value.problems)
    allowed = "allow_empty_secrets: [routes.a.auth.value, routes.b.auth.value]\n" + text
    cfg = configmod.parse(allowed, {"EMPTY": ""})
    assert [r.auth.value for r in cfg.routes] == ["", ""]  # type: ignore[union-attr]


# -- 5. a token unusable on arrival ---------------------------------------------------------


async def _unusable_on_arrival(ttl: int) -> None:
    clock = ManualClock(1_800_000_000.0)
    fake = GetPaid(clock=clock, token_ttl=ttl)
    async with serve(fake) as url:
        # Slow enough that the first request joins the start-up fetch.
        fake.faults.append(Fault(status=None, delay=0.3))
        doc = "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n" + yaml_for(url)
        proxy = create_app(configmod.parse(doc, {}), clock=clock)
        await proxy.start()
        try:
            async with aiohttp.ClientSession() as http:
                status, body, headers = await call(http, "GET", proxy.url + "/gp/a")
                if ttl > 0:
                    assert status == 200  # not yet expired: used once
                else:
                    assert status == 503 and headers["X-Authproxy-Error"] == "token_backoff"
                    assert "unusable on arrival" in body["error"]["message"]
                status, body, headers = await call(http, "GET", proxy.url + "/gp/a")
                assert status == 503 and headers["X-Authproxy-Error"] == "token_backoff"
                assert "unusable on arrival" in body["error"]["message"]
                # No timer loop, with no traffic at all (old code on asyncio's loop:
                # 1,600 token requests a second): the fetch is over and nothing is
                # scheduled to start another, on the injected clock or the loop's.
                manager = proxy.routes["gp"].manager
                assert manager is not None
                await wait_for(lambda: managers_idle(proxy))
                assert not manager.schedule.armed
                assert fake.token_requests == 1
                assert await token_requests_metric(http, proxy.admin_url, outcome="unusable") == 1
                clock.advance(1)  # past the first backoff step: one more attempt
                await call(http, "GET", proxy.url + "/gp/a")
                await wait_for(lambda: managers_idle(proxy))
                assert fake.token_requests == 2
                assert not manager.schedule.armed
        finally:
            await proxy.stop()


@pytest.mark.parametrize("ttl", [0, 1])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_token_unusable_on_arrival_backs_off_on_both_loops(loop: str, ttl: int) -> None:
    # Old code: one or two token requests per request, and on asyncio's loop a
    # timer that fired at once and re-armed.
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_unusable_on_arrival(ttl))


# -- 6. backoff_cap -------------------------------------------------------------------------


async def test_route_recovers_within_backoff_cap_after_an_outage(
    start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    # Old code: the cap was 60 s; after 30 s of 500s the route came back 14-21 s
    # after the endpoint healed.
    fake = GetPaid(clock=clock)
    async with serve(fake) as url:
        fake.always_fault = Fault(status=500)
        proxy = await start_proxy(yaml_for(url), clock=clock)
        attempts_at: list[float] = []
        for _ in range(60):  # 30 s of outage, a request every half second
            before = fake.token_requests
            assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 503
            if fake.token_requests != before:
                attempts_at.append(clock.time())
            clock.advance(0.5)
        gaps = [b - a for a, b in zip(attempts_at, attempts_at[1:], strict=False)]
        assert all(g <= 10.0 for g in gaps), gaps
        fake.always_fault = None
        clock.advance(10.0)
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200


def test_backoff_cap_is_a_key() -> None:
    text = "defaults: {backoff_cap: 3s}\nroutes: {a: {upstream: 'http://x/', auth: {type: none}}}"
    assert configmod.parse(text, {}).routes[0].backoff_cap == 3.0


# -- 7. a lost refresh answer ---------------------------------------------------------------


async def test_lost_refresh_answer_is_not_retried_faster_than_token_timeout(
    start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    # Old code: retried after a 0.25-0.5 s backoff step with the same refresh token,
    # which a server that detects reuse answers by revoking the grant.
    fake = Invoiced(clock=clock)
    async with serve(fake) as url:
        env = {"SECRET": fake.client_secret, "RT": fake.grant_refresh_token()}
        proxy = await start_proxy(
            f"""
routes:
  invd:
    upstream: {url}/
    token_timeout: 1s
    auth:
      type: oauth2_refresh_token
      token_url: {url}/oauth/access_token
      client_id: {fake.client_id}
      client_secret: ${{env:SECRET}}
      refresh_token: ${{env:RT}}
""",
            env=env,
            clock=clock,
        )
        fake.faults.append(Fault(status=None, delay=1.3))  # answers after our timeout
        status, _, headers = await call(http, "GET", proxy.url + "/invd/x")
        assert status == 503 and headers["X-Authproxy-Error"] == "token_backoff"
        assert fake.token_requests == 1
        for _ in range(6):  # 0.6 s: the old code's first backoff step (<= 0.5 s) has passed
            clock.advance(0.1)
            assert (await call(http, "GET", proxy.url + "/invd/x"))[0] == 503
        assert fake.token_requests == 1
        clock.advance(0.5)  # 1.1 s > token_timeout
        await wait_for(lambda: fake.token_requests == 2, timeout=3)


async def test_a_replacement_that_worked_is_replaced_at_once_when_revoked(
    start_proxy: Any, clock: ManualClock, http: Any
) -> None:
    # The cooldown must not hold a token that worked: with Invoice.ng and shared
    # stores, another replica's refresh revokes it within seconds (found by
    # tests/test_stores_redis.py with a first version of the cooldown).
    fake = GetPaid(clock=clock)
    async with serve(fake) as url:
        proxy = await start_proxy(yaml_for(url), clock=clock)
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
        for _ in range(3):  # revoked again and again, inside one cooldown
            fake.revoke_all()
            assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
        assert fake.token_requests == 4
