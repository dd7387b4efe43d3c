"""The editor's JSON Schema (issue 14 item 8): generated from the config model, kept
in sync with the committed copy, and agreeing with ``check`` on what is a key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from proxy import config as c
from proxy.config.json_schema import render

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "config.schema.json"
EXAMPLE = ROOT / "config.example.yaml"

VALID = """
token_store: {type: file, path: /tmp/authproxy-tokens.json}
defaults: {timeout: 30s, egress_proxy: none}
readiness: {require_tokens: [gp]}
routes:
  gp:
    auth: {preset: getpaid, client_id: a, client_secret: "${env:GP}", sandbox: true}
  api:
    upstream: https://api.example.com/
    timeout: ${env:TIMEOUT}
    auth:
      type: login
      request: {url: "https://api.example.com/login", json: {key: "${env:KEY}"}}
      refresh: {url: "https://api.example.com/refresh", response: {access_token: token}}
"""
ENV = {"GP": "gp-secret", "TIMEOUT": "5s", "KEY": "login-key"}

#: each one key misspelt, at a different depth
TYPOS = [
    ("routs: {}\n", "routs"),
    ("routes:\n  a: {upstream: 'http://x/', auth: {type: none}, timout: 5s}\n", "timout"),
    ("limits: {max_bdy: 1MiB}\nroutes:\n  a: {upstream: 'http://x/', auth: {type: none}}\n",
     "max_bdy"),
    ("routes:\n  a:\n    upstream: 'http://x/'\n    auth: {type: oauth2_client_credentials,"
     " token_url: 'http://x/t', client_id: a, client_secrte: b}\n", "client_secrte"),
    ("routes:\n  a: {auth: {preset: getpaid, client_id: a, clientsecret: b}}\n", "clientsecret"),
    ("token_store: {typ: memory}\nroutes:\n  a: {upstream: 'http://x/', auth: {type: none}}\n",
     "typ"),
    ("routes:\n  a:\n    upstream: 'http://x/'\n    auth: {type: none}\n"
     "    tls: {verfy: false}\n", "verfy"),
]  # fmt: skip


def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(COMMITTED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schema_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == render(), (
        "docs/config.schema.json is stale: python -m proxy.config.json_schema > "
        "docs/config.schema.json"
    )


def test_the_module_prints_the_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "proxy.config.json_schema"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout == COMMITTED.read_text()
    assert out.stderr == ""


def test_the_example_validates_and_names_the_schema() -> None:
    text = EXAMPLE.read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=docs/config.schema.json"
    errors = [e.message for e in validator().iter_errors(yaml.safe_load(text))]
    assert errors == []


def test_a_valid_config_passes_both_the_schema_and_check() -> None:
    assert list(validator().iter_errors(yaml.safe_load(VALID))) == []
    assert c.parse(VALID, ENV).route("api").timeout == 5


@pytest.mark.parametrize(("text", "typo"), TYPOS)
def test_a_typo_is_refused_by_the_schema_and_by_check(text: str, typo: str) -> None:
    errors = list(validator().iter_errors(yaml.safe_load(text)))
    assert errors, f"the schema took {typo!r}"
    with pytest.raises(c.ConfigError) as info:
        c.parse(text, {})
    assert any(p.path.endswith(typo) for p in info.value.problems), info.value


def test_a_bad_value_is_refused_by_the_schema() -> None:
    for bad in ("timeout: soon", "max_concurrent: 0", "retry_on_401: maybe"):
        text = f"routes:\n  a: {{upstream: 'http://x/', auth: {{type: none}}, {bad}}}\n"
        assert list(validator().iter_errors(yaml.safe_load(text))), bad


def test_every_key_check_takes_is_in_the_schema() -> None:
    schema = json.loads(COMMITTED.read_text())
    assert set(schema["properties"]) == c.TOP_KEYS
    assert set(schema["$defs"]["RouteConfig"]["properties"]) == c.ROUTE_KEYS
    assert set(schema["$defs"]["Defaults"]["properties"]) == c.DEFAULT_KEYS
    types = {a["properties"].get("type", {}).get("const") for a in schema["$defs"]["Auth"]["oneOf"]}
    assert {"none", "static", "login", "oauth2_jwt_bearer"} <= types
    defaults = schema["$defs"]["RouteConfig"]["properties"]
    assert defaults["timeout"]["default"] == 60 and defaults["refresh_before"]["default"] == 60
