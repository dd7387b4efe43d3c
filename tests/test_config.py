"""Config: typed values, secrets, and errors that name the key path and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import config as c


def parse(text: str, env: dict[str, str] | None = None) -> c.Config:
    return c.parse(text, env or {})


def problems(text: str, env: dict[str, str] | None = None) -> list[c.Problem]:
    with pytest.raises(c.ConfigError) as info:
        parse(text, env)
    return info.value.problems


MINIMAL = """
routes:
  api:
    upstream: https://api.example.com/v1
    auth: {type: none}
"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("60s", 60),
        ("5m", 300),
        ("1h", 3600),
        ("2d", 172800),
        (30, 30),
        ("1.5s", 1.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert c.parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64KiB", 65536),
        ("1MiB", 1048576),
        ("100MB", 100_000_000),
        ("2GiB", 2 * 1024**3),
        (512, 512),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert c.parse_size(text) == size


@pytest.mark.parametrize("bad", ["5x", "-1s", "", "fast", True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        c.parse_duration(bad)


def test_minimal_config_and_defaults() -> None:
    cfg = parse(MINIMAL)
    r = cfg.route("api")
    assert r.prefix == "/api/"
    assert r.upstream == "https://api.example.com/v1/"
    assert (r.refresh_before, r.timeout, r.connect_timeout, r.token_timeout) == (60, 60, 5, 10)
    assert r.max_replay_body == 1024**2 and r.retry_on_401
    assert str(cfg.listen) == "127.0.0.1:8080"
    assert cfg.admin_listen is not None and str(cfg.admin_listen) == "127.0.0.1:9090"
    assert cfg.token_store.type == "memory"


def test_defaults_apply_to_routes_and_routes_override() -> None:
    cfg = parse(
        """
defaults: {timeout: 5s, refresh_before: 2m, max_replay_body: 64KiB}
routes:
  a: {upstream: "http://a/", auth: {type: none}}
  b: {upstream: "http://b/", auth: {type: none}, timeout: 500ms}
"""
    )
    assert cfg.route("a").timeout == 5 and cfg.route("a").refresh_before == 120
    assert cfg.route("a").max_replay_body == 65536
    assert cfg.route("b").timeout == 0.5


def test_env_and_file_secrets(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file-value\n")
    cfg = parse(
        f"""
routes:
  api:
    upstream: http://x/
    auth:
      type: oauth2_client_credentials
      token_url: http://x/token
      client_id: "${{env:CID}}"
      client_secret: "${{file:{secret}}}"
      scope: [read, write]
""",
        {"CID": "the-id"},
    )
    auth = cfg.route("api").auth
    assert isinstance(auth, c.ClientCredentialsAuth)
    assert auth.client_id == "the-id"
    assert auth.client_secret == "from-file-value"  # trailing newline stripped
    assert auth.scope == "read write"
    assert "from-file-value" not in repr(cfg)
    assert str(secret) in cfg.sources


def test_missing_secrets_name_the_key_never_a_value(tmp_path: Path) -> None:
    found = problems(
        f"""
routes:
  invoiceng:
    upstream: http://x/
    auth:
      type: oauth2_client_credentials
      token_url: http://x/token
      client_id: "${{env:NOT_SET}}"
      client_secret: "${{file:{tmp_path}/missing}}"
""",
        {"OTHER": "super-secret-value"},
    )
    text = "\n".join(p.format("cfg.yaml") for p in found)
    assert "routes.invoiceng.auth.client_id: environment variable NOT_SET is not set" in text
    assert "routes.invoiceng.auth.client_secret: cannot read secret file" in text
    assert "super-secret-value" not in text


def test_every_error_in_one_run_with_paths_and_lines() -> None:
    text = """listen: 127.0.0.1:8080
routs: {}
defaults:
  timeout: soon
routes:
  a:
    upstream: ftp://nope
    auth: {type: magic}
    retry_on_401: maybe
  b:
    upstream: http://b/
    auth:
      type: static
      header: X-Key
    inject: {format: "Token"}
    colour: blue
"""
    found = problems(text)
    by_path = {p.path: p for p in found}
    assert by_path["routs"].line == 2 and "did you mean 'routes'" in by_path["routs"].message
    assert by_path["defaults.timeout"].line == 4
    assert by_path["routes.a.upstream"].line == 7
    assert "unknown auth type 'magic'" in by_path["routes.a.auth.type"].message
    assert by_path["routes.a.retry_on_401"].line == 9
    assert by_path["routes.b.auth.value"].message == "is required"
    assert "{access_token}" in by_path["routes.b.inject.format"].message
    assert by_path["routes.b.colour"].message == "unknown key"
    assert by_path["routes.b.colour"].line == 16
    assert len(found) >= 8


def test_yaml_syntax_error_has_a_line() -> None:
    found = problems("routes:\n  a: {upstream: http://x/\n  b: 1\n")
    assert len(found) == 1
    assert found[0].message.startswith("YAML syntax error")
    assert found[0].line in (2, 3)


def test_duplicate_keys_and_prefixes() -> None:
    found = problems(
        """
routes:
  a: {upstream: "http://a/", auth: {type: none}, prefix: /x/}
  b: {upstream: "http://b/", auth: {type: none}, prefix: /x}
  b: {upstream: "http://b/", auth: {type: none}}
"""
    )
    messages = {p.path: p.message for p in found}
    assert messages["routes.b"] == "duplicate key"


def test_prefix_clash_is_an_error() -> None:
    found = problems(
        """
routes:
  a: {upstream: "http://a/", auth: {type: none}, prefix: /x/}
  b: {upstream: "http://b/", auth: {type: none}, prefix: /x}
"""
    )
    assert any(p.path == "routes.b.prefix" and "/x/" in p.message for p in found)


def test_listen_beyond_loopback_needs_protection() -> None:
    text = MINIMAL + "listen: 0.0.0.0:8080\n"
    assert [p.path for p in problems(text)] == ["listen"]
    assert parse(MINIMAL + "listen: 0.0.0.0:8080\nallow_from: [10.0.0.0/8]\n")
    assert parse(MINIMAL + "listen: 0.0.0.0:8080\ninsecure_allow_any: true\n")
    assert parse(MINIMAL + "listen: unix:/tmp/authproxy.sock\n").listen.path
    token = "${env:T}"
    cfg = parse(MINIMAL + f"listen: '[::]:8080'\ninbound_token: '{token}'\n", {"T": "x" * 20})
    assert cfg.inbound_token == "x" * 20


def test_preset_expands_and_needs_its_credentials() -> None:
    cfg = parse(
        """
routes:
  getpaid:
    auth: {preset: getpaid, client_id: a, client_secret: b, sandbox: true}
"""
    )
    r = cfg.route("getpaid")
    assert r.preset == "getpaid"
    assert isinstance(r.auth, c.ClientCredentialsAuth)
    assert r.auth.body == "json"
    assert r.auth.audience == "https://api.sandbox.getpaid.io"
    assert r.upstream == "https://api.sandbox.getpaid.io/"
    found = problems("routes:\n  x:\n    auth: {preset: getpaid, client_id: a}\n")
    assert [p.path for p in found] == ["routes.x.auth.client_secret"]
    found = problems("routes:\n  x:\n    auth: {preset: nope}\n")
    assert "unknown preset" in found[0].message
    found = problems("routes:\n  x:\n    auth: {preset: [a]}\n")
    assert found[0].path == "routes.x.auth.preset"


def test_empty_and_non_mapping_documents() -> None:
    assert problems("")[0].message.startswith("the file is empty")
    assert problems("- a\n- b\n")
    assert problems("routes: {}\n")[0].path == "routes"


def test_load_reports_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(c.ConfigError) as info:
        c.load(str(tmp_path / "nope.yaml"))
    assert "cannot read config file" in str(info.value)


def test_admin_listen_can_be_turned_off() -> None:
    assert parse(MINIMAL + "admin_listen: false\n").admin_listen is None
    assert [p.path for p in problems(MINIMAL + "admin_listen: nowhere\n")] == ["admin_listen"]


def test_yaml_that_cannot_be_constructed_is_a_config_error() -> None:
    for text in ("=", "a: !!python/object:os.system x\n", "routes: !custom 1\n"):
        found = problems(text)
        assert found[0].message.startswith("YAML syntax error"), text
