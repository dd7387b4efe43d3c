"""The token store key: what makes a stored token belong to a route."""

from __future__ import annotations

from proxy import config as c
from proxy.tokens.keys import auth_fingerprint

BASE = """
routes:
  invd:
    upstream: https://api.invoiced.com/
    auth:
      type: oauth2_refresh_token
      token_url: https://invoiced.com/oauth/access_token
      client_id: id
      client_secret: "${env:SECRET}"
"""


def key(text: str, secret: str = "s1") -> str:
    return auth_fingerprint(c.parse(text, {"SECRET": secret}).route("invd"))


def test_a_configured_refresh_token_does_not_orphan_a_stored_one() -> None:
    with_seed = BASE + "      refresh_token: seed-from-config\n"
    assert key(BASE) == key(with_seed)


def test_changed_credentials_or_endpoints_change_the_key() -> None:
    assert key(BASE) != key(BASE, secret="s2")
    assert key(BASE) != key(BASE.replace("api.invoiced.com", "api.sandbox.invoiced.com"))
