"""``authproxy check --explain``: each preset's expansion, with every secret masked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent

SECRETS = {
    "INV_KEY": "inv-key-5bf9f7943aa1",
    "INVD_SECRET": "invoiced-secret-value",
    "INVD_RT": "def50200-refresh-value",
    "TAX_SECRET": "taxizer-secret-value",
    "B2B_PASSWORD": "b2b-password-value",
    "GP_SECRET": "getpaid-secret-value",
}

CONFIG = """
routes:
  inv:
    auth: {preset: invoice_ng, api_key: "${env:INV_KEY}"}
  invd:
    auth:
      preset: invoiced
      client_id: my-client
      client_secret: ${env:INVD_SECRET}
      refresh_token: ${env:INVD_RT}
      sandbox: true
  tax:
    auth: {preset: taxizer, client_id: tax-id, client_secret: "${env:TAX_SECRET}"}
  b2b:
    auth:
      preset: b2b_jwt
      username: api-user
      password: ${env:B2B_PASSWORD}
      base_url: https://b2b.example.com/
  gp:
    auth: {preset: getpaid, client_id: gp-id, client_secret: "${env:GP_SECRET}"}
  gpsb:
    auth: {preset: getpaid, client_id: gp-id, client_secret: "${env:GP_SECRET}", sandbox: true}
  moved:
    auth:
      preset: invoice_ng
      api_key: ${env:INV_KEY}
      base_url: http://127.0.0.1:9999/v1/
"""


def explain(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--explain", "-c", str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **SECRETS},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, yaml.safe_load(proc.stdout)["routes"]


def test_explain_masks_every_secret(tmp_path: Path) -> None:
    out, _ = explain(tmp_path)
    for value in SECRETS.values():
        assert value not in out
    assert out.count("'***'") >= 7


def test_explain_shows_each_preset_expanded(tmp_path: Path) -> None:
    _, routes = explain(tmp_path)

    inv = routes["inv"]
    assert inv["upstream"] == "https://api.invoice.ng/v1/"
    assert inv["auth"]["type"] == "login"
    assert inv["auth"]["request"] == {
        "method": "POST",
        "url": "https://api.invoice.ng/v1/authenticate",
        "json": {"api_key": "***"},
    }
    assert inv["auth"]["refresh"]["method"] == "GET"
    assert inv["auth"]["refresh"]["url"] == "https://api.invoice.ng/v1/token/refresh"
    assert inv["auth"]["refresh"]["headers"] == {"Authorization": "Bearer {access_token}"}

    invd = routes["invd"]  # sandbox: invoiced.com -> sandbox.invoiced.com everywhere
    assert invd["upstream"] == "https://api.sandbox.invoiced.com/"
    assert invd["auth"]["type"] == "oauth2_refresh_token"
    assert invd["auth"]["token_url"] == "https://sandbox.invoiced.com/oauth/access_token"
    assert invd["auth"]["authorize_url"] == "https://sandbox.invoiced.com/oauth/authorize"
    assert invd["auth"]["client_secret"] == "***" and invd["auth"]["refresh_token"] == "***"

    tax = routes["tax"]
    assert tax["auth"]["request"]["url"] == "https://apistaging.taxizer.com/v1/Auth/Connect"
    # a client id is masked like the secret it goes with, written literally or not
    assert tax["auth"]["request"]["json"] == {"clientId": "***", "clientSecret": "***"}
    assert tax["auth"]["response"]["expires_at"] == "jwtTokenExpireAtUTC"

    b2b = routes["b2b"]
    assert b2b["auth"]["request"]["url"] == "https://b2b.example.com/auth/login"
    assert b2b["auth"]["response"]["access_token"] == "data.access_token"
    # a placeholder is not a secret: it shows as written
    assert b2b["auth"]["refresh"]["json"] == {"refresh_token": "{refresh_token}"}

    gp, gpsb = routes["gp"]["auth"], routes["gpsb"]["auth"]
    assert gp["type"] == "oauth2_client_credentials" and gp["body"] == "json"
    assert gp["token_url"] == gpsb["token_url"] == "https://auth.getpaid.io/oauth/token"
    assert gp["audience"] == "https://api.getpaid.io"
    assert gpsb["audience"] == "https://api.sandbox.getpaid.io"
    assert routes["gpsb"]["upstream"] == "https://api.sandbox.getpaid.io/"
    assert gp["scope"] == "accounts:read_write invoices:read_write"

    moved = routes["moved"]
    assert moved["upstream"] == "http://127.0.0.1:9999/v1/"
    assert moved["auth"]["request"]["url"] == "http://127.0.0.1:9999/v1/authenticate"
    assert moved["auth"]["refresh"]["url"] == "http://127.0.0.1:9999/v1/token/refresh"
    assert moved["preset"] == "invoice_ng"


def test_preset_missing_credential_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("routes:\n  gp:\n    auth: {preset: getpaid, client_id: x}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--explain", "-c", str(path)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "routes.gp.auth.client_secret: is required by preset getpaid" in proc.stderr
    assert "Traceback" not in proc.stderr


def _pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def test_every_kind_of_secret_is_masked_the_same_way(tmp_path: Path) -> None:
    """Each secret a config can hold, written literally, from ${env:} or from ${file:}:
    no marker may appear in the explain output, and each is shown as '***'."""
    from proxy import config as c
    from proxy.config.explain import explain as explain_config

    pem = _pem()
    (tmp_path / "key.pem").write_text(pem)
    (tmp_path / "rt-secret").write_text("marker-rt-secret-from-file\n")
    env = {
        "INBOUND": "marker-inbound-token-0001",
        "EXTRA": "marker-extra-assertion",
        "HINT": "marker-authorize-param",
        "CLAIM": "marker-jwt-claim",
        "HDR": "marker-login-header",
        "FORM": "marker-login-form",
        "TAX_ID": "marker-taxizer-client-id",
        "B2B_USER": "marker-b2b-user-from-env",
    }
    fernet = "bWFya2VyLWZlcm5ldC1rZXktMzItYnl0ZXMtbG9uZyE="  # 32 bytes: a valid key
    text = f"""
inbound_token: ${{env:INBOUND}}
token_store:
  type: redis
  url: redis://user:marker-redis-url-password@127.0.0.1:6379/0
  encryption_key: {fernet}
routes:
  cc:
    upstream: https://a.example/
    egress_proxy: {{url: "http://proxy.example:3128", username: u, password: marker-egress-pw}}
    auth:
      type: oauth2_client_credentials
      token_url: https://idp.example/token
      client_id: marker-cc-client-id
      client_secret: marker-cc-client-secret
      extra: {{client_assertion: "${{env:EXTRA}}"}}
  rt:
    auth:
      type: oauth2_refresh_token
      refresh_token: marker-rt-refresh-token
      authorize_params: {{login_hint: "${{env:HINT}}"}}
      client_secret: ${{file:{tmp_path}/rt-secret}}
      client_id: marker-rt-client-id
      token_url: https://idp.example/token
    upstream: https://b.example/
  jwt:
    upstream: https://c.example/
    auth:
      type: oauth2_jwt_bearer
      token_url: https://idp.example/token
      private_key: ${{file:{tmp_path}/key.pem}}
      client_secret: marker-jwt-client-secret
      claims: {{iss: me, aud: you, extra_claim: "${{env:CLAIM}}"}}
  pkjwt:
    upstream: https://d.example/
    auth:
      type: oauth2_client_credentials
      token_url: https://idp.example/token
      client_id: marker-pkjwt-client-id
      client_auth: private_key_jwt
      private_key: |
{textwrap.indent(pem, " " * 8)}
  static:
    upstream: https://e.example/
    auth: {{type: static, header: X-Key, value: marker-static-value}}
  login:
    upstream: https://f.example/
    auth:
      type: login
      request:
        url: https://f.example/login
        headers: {{X-Api-Key: "${{env:HDR}}"}}
        json: {{api_key: marker-login-api-key, password: marker-login-password}}
      refresh:
        url: https://f.example/refresh
        form: {{refresh_token: "{{refresh_token}}", other: "${{env:FORM}}"}}
  tax:
    auth: {{preset: taxizer, client_id: "${{env:TAX_ID}}", client_secret: marker-tax-secret}}
  tax2:
    auth:
      preset: taxizer
      client_id: marker-tax-literal-id
      client_secret: marker-tax-secret-2
      base_url: https://tax2.example/
  inv:
    auth: {{preset: invoice_ng, api_key: marker-invoice-api-key}}
  b2b:
    auth: {{preset: b2b_jwt, username: "${{env:B2B_USER}}", password: marker-b2b-password,
           base_url: "https://b2b.example/"}}
  invd:
    auth: {{preset: invoiced, client_id: marker-invd-id, client_secret: marker-invd-secret,
           refresh_token: marker-invd-refresh}}
  gp:
    auth: {{preset: getpaid, client_id: marker-gp-id, client_secret: marker-gp-secret}}
"""
    sentinel = """
token_store:
  type: redis
  password: marker-store-password
  sentinel:
    master_name: main
    sentinels: ["127.0.0.1:26379"]
    password: marker-sentinel-password
routes:
  a: {upstream: "https://a.example/", auth: {type: none}}
"""
    outs = [explain_config(c.parse(text, env)), explain_config(c.parse(sentinel, {}))]
    out = "\n".join(outs)
    markers = [line for line in text.split() if "marker-" in line]
    assert len(markers) >= 20
    leaked = sorted({m for m in re.findall(r"marker-[a-z0-9-]+", text + sentinel) if m in out})
    leaked += [v for v in env.values() if v in out]
    leaked += [line for line in pem.splitlines()[1:-1] if line in out]
    assert fernet not in out
    assert not leaked, leaked
    assert "marker" not in out
    # the same mask everywhere, and placeholders shown as written
    assert "{refresh_token}" in out
    assert "user:***@" not in out and "redis://user@127.0.0.1:6379/0" in out
    assert out.count("'***'") >= 30
