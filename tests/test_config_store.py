"""``token_store`` for Redis: credentials and TLS as keys, URL tricks refused by
``check`` with the key path and the line, passwords never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy import config as c
from proxy.config.explain import explain
from proxy.tokens.stores.redis_topology import build_client, where

ROUTES = """
routes:
  api:
    upstream: https://api.example.com/v1
    token_timeout: 4s
    auth:
      type: oauth2_client_credentials
      token_url: https://idp.example.com/token
      client_id: a
      client_secret: b
"""


def store(body: str) -> str:
    return "token_store:\n" + body + ROUTES


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(c.ConfigError) as info:
        c.parse(text, env or {}, source="cfg.yaml")
    return [p.format("cfg.yaml") for p in info.value.problems]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        # before: passed check, then 500 on every request
        ("redis://127.0.0.1:6379/0?sentinel=x", "unknown query parameter 'sentinel'; use token_"),
        ("redis://127.0.0.1:6379/0?ssl_ca_file=/x", "'ssl_ca_file'; use token_store.tls"),
        ("redis://127.0.0.1:6379/0?retry_on_timout=1", "unknown query parameter 'retry_on_timout'"),
        # before: silently lifted the 1 s call bound
        ("redis://127.0.0.1:6379/0?socket_timeout=5", "socket_timeout=5 is above the store's call"),
        # before: a host named `ss`
        ("redis://:pa/ss@127.0.0.1:6379/0", "contains '/' or '@': percent-encode it"),
        ("redis://:pa@ss@127.0.0.1:6379/0", "contains '/' or '@': percent-encode it"),
        ("http://127.0.0.1:6379/0", "must start with redis://, rediss:// or unix://"),
        ("redis://127.0.0.1:6379/zero", "the path must be a database number"),
    ],
)
def test_bad_urls_are_config_errors_with_key_path_and_line(url: str, said: str) -> None:
    found = problems(store(f"  type: redis\n  url: {url}\n"))
    assert len(found) == 1 and found[0].startswith("cfg.yaml:3: token_store.url: "), found
    assert said in found[0], found
    assert "pa/ss" not in found[0] and "pa@ss" not in found[0]  # the password is not echoed


def test_literal_password_in_url_is_moved_to_password_and_masked_in_explain() -> None:
    cfg = c.parse(store("  type: redis\n  url: redis://app:s3cr%40t@10.0.0.5:6380/2\n"), {})
    ts = cfg.token_store
    assert ts.password == "s3cr@t" and ts.username == "app"
    assert ts.url == "redis://app@10.0.0.5:6380/2"
    text = explain(cfg)
    assert "s3cr" not in text
    assert "url: redis://app@10.0.0.5:6380/2" in text and "password: '***'" in text
    assert where(ts) == "10.0.0.5:6380/2"
    client = build_client(ts)
    kw = client.connection_pool.connection_kwargs
    assert (kw["host"], kw["port"], kw["db"], kw["password"]) == ("10.0.0.5", 6380, 2, "s3cr@t")
    assert kw["socket_timeout"] == 1.0  # the call bound


def test_credentials_tls_sentinel_and_cluster_keys(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "pw").write_text("from-a-file\n")
    cfg = c.parse(
        store(
            f"""  type: redis
  username: authproxy
  password: ${{file:{tmp_path}/pw}}
  tls: {{ca_file: {tmp_path}/ca.pem}}
  sentinel:
    master_name: mymaster
    sentinels: [s1:26379, "10.0.0.2:26380"]
    password: ${{env:SENTINEL_PW}}
"""
        ),
        {"SENTINEL_PW": "sentinel-secret"},
    )
    ts = cfg.token_store
    assert ts.password == "from-a-file" and ts.username == "authproxy"
    assert ts.tls is not None and ts.tls.ca_file == f"{tmp_path}/ca.pem"
    assert ts.sentinel is not None
    assert ts.sentinel.sentinels == (("s1", 26379), ("10.0.0.2", 26380))
    assert ts.lock_lease == 4.0  # sized from the routes' token_timeout
    text = explain(cfg)
    assert "from-a-file" not in text and "sentinel-secret" not in text
    assert where(ts) == "sentinel mymaster via s1:26379"


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("  type: redis\n", "token_store.url: is required for a redis store"),
        (
            "  type: redis\n  url: redis://h:1/0\n  sentinel: {master_name: m, sentinels: [a:1]}\n",
            "token_store.sentinel: and token_store.url exclude each other",
        ),
        (
            "  type: redis\n  sentinel: {master_name: m, sentinels: [nope]}\n",
            "token_store.sentinel.sentinels[0]: must be host:port",
        ),
        ("  type: redis\n  url: redis://h:1/3\n  cluster: true\n", "only database 0"),
        ("  type: memory\n  password: x\n", "token_store.password: applies to type redis only"),
        ("  type: redis\n  url: redis://h:1/0\n  tls: {ca_file: /nope.pem}\n", "does not exist"),
    ],
)
def test_store_key_errors(body: str, said: str) -> None:
    found = problems(store(body))
    assert any(said in f for f in found), found


def test_check_refuses_unknown_url_parameter_naming_key_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(store("  type: redis\n  url: redis://127.0.0.1:1/0?ssl_ca_file=/x\n"))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{cfg}:3: token_store.url: unknown query parameter 'ssl_ca_file'" in result.stderr
