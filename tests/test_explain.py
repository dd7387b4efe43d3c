"""``authproxy check --explain``: each preset's expansion, with every secret masked."""

from __future__ import annotations

import os
import subprocess
import sys
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
