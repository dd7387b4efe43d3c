"""``authproxy authorize``: the authorization-code consent, driven end to end
against the Invoiced fake, with the command as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from yarl import URL

from proxy import config as configmod
from proxy.cli.authorize import store_key
from tests.fakes import Invoiced, serve
from tests.fakes.invoiced import s256
from tests.redis_fixture import free_port
from tests.storekit import ROOT, ProxyProcess, env_for, file_entries


@dataclass
class Setup:
    fake: Invoiced
    url: str
    redirect_uri: str
    tmp: Path

    def config(self, *, store: str | None = None, pkce: bool = False, extra: str = "") -> Path:
        store = store or f"  type: file\n  path: {self.tmp / 'tokens.json'}\n"
        path = self.tmp / "authproxy.yaml"
        path.write_text(
            f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
token_store:
{store}
routes:
  invd:
    auth:
      preset: invoiced
      client_id: {self.fake.client_id}
      client_secret: ${{env:INVOICED_SECRET}}
      redirect_uri: {self.redirect_uri}
      base_url: {self.url}/
      token_url: {self.url}/oauth/access_token
      authorize_url: {self.url}/oauth/authorize
      pkce: {str(pkce).lower()}
{extra}"""
        )
        return path

    @property
    def env(self) -> dict[str, str]:
        return {"INVOICED_SECRET": self.fake.client_secret}


@pytest.fixture
async def invoiced(tmp_path: Path) -> AsyncIterator[Setup]:
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    fake = Invoiced(redirect_uri=redirect)
    async with serve(fake) as url:
        yield Setup(fake, url, redirect, tmp_path)


class Authorize:
    """The command, running; ``url()`` waits for the URL it prints."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []

    @classmethod
    async def start(cls, config: Path, env: dict[str, str], timeout: float = 20) -> Authorize:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "authorize", "-c", str(config), "invd",
            "--timeout", str(timeout),
            cwd=ROOT, env=env_for(env),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(proc)

    async def url(self) -> str:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
            if not line:
                _, err = await self.proc.communicate()
                raise AssertionError(f"no URL printed; stderr: {err.decode()}")
            text = line.decode().strip()
            self.out.append(text)
            if text.startswith("http"):
                return text

    async def finish(self) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(), 30)
        stdout = "\n".join(self.out) + "\n" + out.decode()
        assert self.proc.returncode is not None
        return self.proc.returncode, stdout, err.decode()


async def consent(url: str) -> tuple[int, str]:
    """What a browser does: the provider's page answers 302 to the callback."""
    async with aiohttp.ClientSession() as s:
        async with s.get(url, allow_redirects=False) as r:
            assert r.status == 302, await r.text()
            callback = r.headers["Location"]
        async with s.get(callback, allow_redirects=False) as r:
            return r.status, await r.text()


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@pytest.mark.parametrize("pkce", [False, True])
async def test_authorize_stores_the_refresh_token_and_the_proxy_uses_it(
    invoiced: Setup, pkce: bool, tmp_path: Path
) -> None:
    fake = invoiced.fake
    cfg = invoiced.config(pkce=pkce)
    cmd = await Authorize.start(cfg, invoiced.env)
    url = await cmd.url()
    q = query_of(url)
    assert url.startswith(f"{invoiced.url}/oauth/authorize?")
    assert q["response_type"] == "code"
    assert q["client_id"] == fake.client_id
    assert q["redirect_uri"] == invoiced.redirect_uri
    assert q["scope"] == "read_write"
    assert len(q["state"]) >= 32
    assert ("code_challenge" in q) is pkce
    if pkce:
        assert q["code_challenge_method"] == "S256"
    assert fake.client_secret not in "\n".join(cmd.out)

    status, page = await consent(url)
    code, out, err = await cmd.finish()
    assert (code, err) == (0, "")
    assert status == 200 and "Authorization complete" in page
    assert "route invd is authorized" in out
    assert fake.code_exchanges == 1
    exchange = fake.token_log[-1]
    form = parse_qs(exchange.body.decode())
    assert form["grant_type"] == ["authorization_code"]
    assert form["redirect_uri"] == [invoiced.redirect_uri]
    if pkce:
        assert s256(form["code_verifier"][0]) == q["code_challenge"]
    else:
        assert "code_verifier" not in form

    # stored under the key the proxy computes, refresh token included
    config = configmod.load(str(cfg), environ=invoiced.env)
    key = store_key(config.route("invd"))
    stored = file_entries(tmp_path / "tokens.json")[key]
    assert stored["refresh_token"] in fake.refresh_tokens
    assert stored["how"] == "authorize"

    # a proxy started now uses the stored token: no token request at all
    body = "token_store:" + cfg.read_text().split("token_store:", 1)[1]
    proxy = ProxyProcess(tmp_path, "after", body, env=invoiced.env)
    proxy.start()
    try:
        await proxy.wait_healthy()
        async with aiohttp.ClientSession() as s, s.get(proxy.url + "/invd/invoices") as r:
            assert r.status == 200, await r.text()
        async with aiohttp.ClientSession() as s, s.get(proxy.admin_url + "/readyz") as r:
            assert r.status == 200
    finally:
        proxy.stop()
    assert fake.token_requests == 1
    assert fake.api_log[-1].token_id == fake.access_tokens[stored["access_token"]].jti


async def test_a_wrong_state_stores_nothing_and_fails(invoiced: Setup, tmp_path: Path) -> None:
    cmd = await Authorize.start(invoiced.config(), invoiced.env)
    url = await cmd.url()
    forged = str(URL(url).update_query(state="forged-state-value"))
    status, page = await consent(forged)
    code, _, err = await cmd.finish()
    assert code == 1
    assert "state does not match" in err
    assert status == 400 and "Authorization failed" in page
    assert invoiced.fake.code_exchanges == 0
    assert file_entries(tmp_path / "tokens.json") == {}


async def test_a_denied_consent_stores_nothing_and_fails(invoiced: Setup, tmp_path: Path) -> None:
    invoiced.fake.deny_consent = True
    cmd = await Authorize.start(invoiced.config(), invoiced.env)
    status, page = await consent(await cmd.url())
    code, _, err = await cmd.finish()
    assert code == 1
    assert "consent was denied" in err and "access_denied" in err
    assert "Authorization failed" in page and "denied" in page
    assert file_entries(tmp_path / "tokens.json") == {}
    assert "Traceback" not in err


async def test_no_callback_in_time_is_a_clear_failure(invoiced: Setup) -> None:
    cmd = await Authorize.start(invoiced.config(), invoiced.env, timeout=1)
    await cmd.url()
    code, _, err = await cmd.finish()
    assert code == 1
    assert "no callback within 1s" in err and "--timeout" in err


async def test_a_failed_code_exchange_says_why(invoiced: Setup, tmp_path: Path) -> None:
    cmd = await Authorize.start(invoiced.config(), {"INVOICED_SECRET": "wrong-secret"})
    status, page = await consent(await cmd.url())
    code, _, err = await cmd.finish()
    assert code == 1
    assert "code exchange failed: token endpoint answered 401 (invalid_client)" in err
    assert status == 400 and "wrong-secret" not in page + err
    assert file_entries(tmp_path / "tokens.json") == {}


async def test_memory_store_and_remote_redirect_are_refused(invoiced: Setup) -> None:
    cmd = await Authorize.start(invoiced.config(store="  type: memory\n"), invoiced.env)
    code, out, err = await cmd.finish()
    assert code == 2 and out.strip() == ""
    assert "token_store.type is memory" in err and "file store" in err
    assert invoiced.fake.authorizations == 0

    invoiced.redirect_uri = "https://app.example.com/callback"
    cmd = await Authorize.start(invoiced.config(), invoiced.env)
    code, _, err = await cmd.finish()
    assert code == 2
    assert "redirect_uri must be an http:// loopback address" in err


async def test_route_without_refresh_token_is_not_ready_until_authorized(
    invoiced: Setup, start_proxy: Any, http: aiohttp.ClientSession
) -> None:
    cfg = invoiced.config()
    text = cfg.read_text().split("token_store:", 1)[1]
    proxy = await start_proxy("token_store:" + text, env=invoiced.env)
    async with http.get(proxy.url + "/invd/invoices") as r:
        body = json.loads(await r.read())
        assert r.status == 502
        assert r.headers["X-Authproxy-Error"] == "token_unavailable"
    assert body["error"]["route"] == "invd"
    assert "run `authproxy authorize invd`" in body["error"]["message"]
    async with http.get(proxy.admin_url + "/readyz") as r:
        ready = json.loads(await r.read())
        # one finished first attempt: the pod is ready, the route shows it is not
        assert r.status == 200
    assert ready["routes"]["invd"]["ready"] is False
    assert "authproxy authorize invd" in ready["routes"]["invd"]["last_error"]
    assert ready["routes"]["invd"]["needs_consent"] is True
    # not retried in a loop: nothing reached the provider
    assert invoiced.fake.token_requests == 0

    cmd = await Authorize.start(cfg, invoiced.env)
    await consent(await cmd.url())
    assert (await cmd.finish())[0] == 0
    # the running proxy picks the stored token up once its backoff step ends
    for _ in range(60):
        async with http.get(proxy.url + "/invd/invoices") as r:
            if r.status == 200:
                break
        await asyncio.sleep(0.1)
    assert r.status == 200
    assert invoiced.fake.token_requests == 1  # the code exchange only


# -- issue 13: authorize_params, resource, RFC 9207 iss ---------------------------------------


EXTRAS = """      authorize_params: {prompt: consent, access_type: offline}
      resource: https://api.example/
      issuer: ISSUER
"""


async def test_authorize_params_and_resource_are_in_the_authorization_request(
    invoiced: Setup, tmp_path: Path
) -> None:
    cfg = invoiced.config(extra=EXTRAS.replace("ISSUER", invoiced.url + "/"))
    cmd = await Authorize.start(cfg, invoiced.env)
    url = await cmd.url()
    q = query_of(url)
    assert q["prompt"] == "consent" and q["access_type"] == "offline"
    assert q["resource"] == "https://api.example/"
    # the provider's redirect, with the RFC 9207 iss it would add
    async with aiohttp.ClientSession() as s:
        async with s.get(url, allow_redirects=False) as r:
            callback = str(URL(r.headers["Location"]).update_query(iss=invoiced.url + "/"))
        async with s.get(callback) as r:
            assert r.status == 200
    code, _, err = await cmd.finish()
    assert (code, err) == (0, "")
    form = parse_qs(invoiced.fake.token_log[-1].body.decode())
    assert form["resource"] == ["https://api.example/"]  # on the code exchange too


async def test_callback_iss_of_another_issuer_stores_nothing(
    invoiced: Setup, tmp_path: Path
) -> None:
    cfg = invoiced.config(extra=EXTRAS.replace("ISSUER", invoiced.url + "/"))
    cmd = await Authorize.start(cfg, invoiced.env)
    url = await cmd.url()
    async with aiohttp.ClientSession() as s:
        async with s.get(url, allow_redirects=False) as r:
            callback = str(URL(r.headers["Location"]).update_query(iss="https://evil.example/"))
        async with s.get(callback) as r:
            assert r.status == 400 and "Authorization failed" in await r.text()
    code, _, err = await cmd.finish()
    assert code == 1 and "RFC 9207" in err
    assert invoiced.fake.code_exchanges == 0
    assert file_entries(tmp_path / "tokens.json") == {}
