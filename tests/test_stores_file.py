"""The file token store: restarts reuse the stored token, 0600, atomic, encrypted,
shared safely by processes on one host; rotated refresh tokens are stored before use."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.clock import ManualClock
from proxy.config.model import TokenStoreConfig
from proxy.tokens.manager import Token
from proxy.tokens.stores.base import StoreError, open_store
from tests.fakes import B2B, InvoiceNg, serve
from tests.fakes.base import AccessToken, json_response
from tests.storekit import ROOT, ProxyProcess, env_for, file_entries
from tests.waiting import until

FERNET_KEY = "x7OGRb9hM4IjhPvBeqIBKE95FsqTbIzc3kyrHufomU8="
OTHER_KEY = "xgz7MyDvjzMAaxkqX4y-HBGwbmRoo6NsHZJfdR9tzjU="


@pytest.fixture
async def invoice_ng() -> AsyncIterator[tuple[InvoiceNg, str]]:
    fake = InvoiceNg()
    async with serve(fake) as url:
        yield fake, url


def invoice_ng_config(url: str, store: str) -> str:
    return f"""
token_store:
{store}
routes:
  inv:
    auth:
      preset: invoice_ng
      api_key: ${{env:KEY}}
      base_url: {url}/v1/
"""


def file_store(path: Path, key_file: Path | None = None) -> str:
    text = f"  type: file\n  path: {path}\n"
    if key_file is not None:
        text += f"  encryption_key: ${{file:{key_file}}}\n"
    return text


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url) as r:
        return r.status, json.loads(await r.read())


async def test_restart_uses_the_stored_token_without_a_new_login(
    invoice_ng: tuple[InvoiceNg, str], start_proxy: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake, url = invoice_ng
    path = tmp_path / "state" / "tokens.json"
    cfg = invoice_ng_config(url, file_store(path))
    first = await start_proxy(cfg, env={"KEY": fake.api_key})
    status, _ = await get(http, first.url + "/inv/invoices")
    assert status == 200
    assert fake.token_requests == 1
    await first.stop()

    second = await start_proxy(cfg, env={"KEY": fake.api_key})
    status, _ = await get(http, second.url + "/inv/invoices")
    assert status == 200
    assert fake.token_requests == 1, "the restarted proxy logged in again"
    assert fake.api_log[0].token_id == fake.api_log[1].token_id
    # 0600, and the temporary files of the atomic writes are gone
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokens.json", "tokens.json.lock",
                                                             "tokens.json.locks"]  # fmt: skip
    assert stat.S_IMODE(path.with_name("tokens.json.lock").stat().st_mode) == 0o600
    # without a key the token is stored as it is (what encryption must hide)
    assert fake.issued[0] in path.read_text()


async def test_a_changed_credential_does_not_pick_up_the_old_token(
    invoice_ng: tuple[InvoiceNg, str], start_proxy: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake, url = invoice_ng
    path = tmp_path / "tokens.json"
    proxy = await start_proxy(invoice_ng_config(url, file_store(path)), env={"KEY": "wrong"})
    async with http.get(proxy.url + "/inv/x") as r:
        assert r.status == 502
    await proxy.stop()
    proxy = await start_proxy(invoice_ng_config(url, file_store(path)), env={"KEY": fake.api_key})
    assert (await get(http, proxy.url + "/inv/x"))[0] == 200
    assert fake.logins == 1


async def test_encrypted_store_hides_tokens_and_still_restarts_without_login(
    invoice_ng: tuple[InvoiceNg, str], start_proxy: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake, url = invoice_ng
    key_file = tmp_path / "store.key"
    key_file.write_text(FERNET_KEY + "\n")
    path = tmp_path / "tokens.json"
    cfg = invoice_ng_config(url, file_store(path, key_file))
    first = await start_proxy(cfg, env={"KEY": fake.api_key})
    assert (await get(http, first.url + "/inv/a"))[0] == 200
    await first.stop()
    raw = path.read_text()
    token = fake.issued[0]
    assert token not in raw
    assert token.split(".")[1] not in raw  # not even the JWT's payload
    (value,) = file_entries(path).values()
    assert isinstance(value, str) and value.startswith("gAAAAA")  # a Fernet token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    second = await start_proxy(cfg, env={"KEY": fake.api_key})
    assert (await get(http, second.url + "/inv/b"))[0] == 200
    assert fake.token_requests == 1


def test_wrong_or_malformed_key_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = open_store(TokenStoreConfig(type="file", path=str(path), encryption_key=FERNET_KEY))
    asyncio.run(store.save("inv:abc", Token("secret-access-token", refresh_token="rt-1")))

    with pytest.raises(StoreError, match="not the key it was written with"):
        open_store(TokenStoreConfig(type="file", path=str(path), encryption_key=OTHER_KEY))
    with pytest.raises(StoreError, match="encryption_key is not set"):
        open_store(TokenStoreConfig(type="file", path=str(path)))
    with pytest.raises(StoreError, match="not a Fernet key") as err:
        open_store(TokenStoreConfig(type="file", path=str(path), encryption_key="hunter2"))
    assert "hunter2" not in str(err.value)
    path.write_text("{not json")
    with pytest.raises(StoreError, match="not a token store file"):
        open_store(TokenStoreConfig(type="file", path=str(path)))


def test_serve_with_the_wrong_key_exits_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    store = open_store(TokenStoreConfig(type="file", path=str(path), encryption_key=FERNET_KEY))
    asyncio.run(store.save("inv:abc", Token("secret-access-token", refresh_token="rt-1")))
    key_file = tmp_path / "other.key"
    key_file.write_text(OTHER_KEY)
    proc = ProxyProcess(tmp_path, "wrongkey", invoice_ng_config("http://127.0.0.1:9", file_store(
        path, key_file)), env={"KEY": "k"})  # fmt: skip
    proc.start()
    assert proc.proc is not None
    code = proc.proc.wait(20)
    out = proc.logs()
    assert code == 1
    assert "token_store.encryption_key is not the key it was written with" in out
    assert "Traceback" not in out
    assert OTHER_KEY not in out and "secret-access-token" not in out


_WORKER = """
import asyncio, sys
from proxy.config.model import TokenStoreConfig
from proxy.tokens.stores.base import open_store
from proxy.tokens.manager import Token

async def main(path, name, rounds):
    store = open_store(TokenStoreConfig(type="file", path=path))
    for i in range(rounds):
        # read-modify-write of one shared counter, under the cross-process lock
        async with store.lock("counter"):
            tok = await store.load("counter")
            n = int(tok.access_token) if tok else 0
            await asyncio.sleep(0.001)
            await store.save("counter", Token(str(n + 1)))
        # and a key of its own each round: concurrent writes must not lose any
        await store.save(f"{name}-{i}", Token(f"{name}-{i}"))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_processes_on_one_host_share_the_file_without_losing_updates(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    rounds = 15
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), f"w{n}", str(rounds)],
            cwd=ROOT,
            env=env_for(),
        )
        for n in range(2)
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    entries = file_entries(path)
    assert entries["counter"]["access_token"] == str(2 * rounds)
    assert len(entries) == 1 + 2 * rounds
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


async def test_rotated_refresh_token_is_stored_before_the_new_token_is_used(
    start_proxy: Any, http: aiohttp.ClientSession, tmp_path: Path, clock: ManualClock
) -> None:
    fake = B2B(clock=clock, access_ttl=600)
    path = tmp_path / "tokens.json"
    checked: list[str] = []
    problems: list[str] = []

    async def api(request: web.Request, access: AccessToken) -> web.StreamResponse:
        if access.token not in checked:
            checked.append(access.token)
            # The first request carrying a new access token: the store must already
            # hold it, and with it the refresh token it came with.
            (stored,) = file_entries(path).values()
            if stored["access_token"] != access.token:
                problems.append(f"token {len(checked)} reached the API before it was stored")
            elif fake.refresh_tokens[stored["refresh_token"]].used:
                problems.append("the stored refresh token was already rotated away")
        return json_response({"ok": True})

    fake.api_handler = api
    async with serve(fake) as url:
        cfg = f"""
token_store:
{file_store(path)}
routes:
  b2b:
    upstream: {url}/api/v1/
    refresh_before: 60s
    auth:
      preset: b2b_jwt
      username: {fake.username}
      password: ${{env:PASSWORD}}
      base_url: {url}/
"""
        proxy = await start_proxy(cfg, env={"PASSWORD": fake.password}, clock=clock)
        for _ in range(3):
            async with http.get(proxy.url + "/b2b/products") as r:
                assert r.status == 200
            clock.advance(560)  # into the refresh window: the next request refreshes
            async with http.get(proxy.url + "/b2b/products") as r:
                assert r.status == 200
            manager = proxy.routes["b2b"].manager
            await until(
                lambda m=manager: m.token is not None and m.token.access_token not in checked,
                "the rotated token",
            )
        async with http.get(proxy.url + "/b2b/products") as r:
            assert r.status == 200
    assert problems == []
    assert len(checked) == 4  # the login's token and three rotations
    assert fake.logins == 1 and fake.refreshes == 3 and fake.reuse_detections == 0
