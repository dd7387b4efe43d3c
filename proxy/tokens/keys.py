"""The token store key: what makes a stored token belong to a route.

One formula, used by the route at run time, ``authproxy authorize`` (which
stores the first token) and ``authproxy check --connect`` (which reads it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from proxy.config.model import RouteConfig

#: auth keys added after stores held tokens (issue 13), with their defaults
_ADDED_AUTH_DEFAULTS: dict[str, object] = {
    "private_key": None, "key_id": None, "resource": (), "issuer": None,
    "discovery_url": None, "authorize_params": {}, "dpop": False,
}  # fmt: skip


def auth_fingerprint(route: RouteConfig) -> str:
    """A digest of what identifies a route's token: its auth and upstream.

    Used in the token store key, so that changed credentials or endpoints never
    pick up an old token, while a restart or another replica finds the same one.
    The secrets go into the digest, never into the store key as text.

    A configured ``refresh_token`` is left out: it only seeds the first refresh, so
    adding one to the config after ``authorize`` must not orphan the stored token.
    """
    auth = asdict(route.auth)
    # Keys added later enter the digest only when set: an upgrade must not orphan
    # the stored tokens (a refresh token would need a new `authorize`).
    for key, default in _ADDED_AUTH_DEFAULTS.items():
        if key in auth and auth[key] == default:
            del auth[key]
    if route.auth.type == "oauth2_refresh_token":
        auth.pop("refresh_token", None)
    ident = {"auth": auth, "upstream": route.upstream}
    raw = json.dumps(ident, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:24]


def store_key(route: RouteConfig) -> str:
    """The token store key of ``route``. A route with ``dpop: true`` adds its
    key's thumbprint at run time (:func:`dpop_key`)."""
    return f"{route.name}:{auth_fingerprint(route)}"


def dpop_key(key: str, thumbprint: str) -> str:
    """``key`` for tokens bound to this process's DPoP key: never another's."""
    return f"{key}:dpop-{thumbprint[:16]}"
