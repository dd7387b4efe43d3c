"""DPoP (RFC 9449): a route's key pair and its proofs.

A route with ``dpop: true`` holds an EC P-256 key pair, made at start-up and
never written anywhere. Every token request carries a proof (``DPoP`` header,
``htm``/``htu`` of the token endpoint), and the provider binds the token to the
key (``cnf.jkt``). Every forwarded request then carries
``Authorization: DPoP <token>`` and a fresh proof with ``ath``, the hash of
that token (RFC 9449 4.2, 7.1).

Servers may demand a nonce (RFC 9449 8, 9): a 400 ``use_dpop_nonce`` from the
token endpoint, or a 401 ``WWW-Authenticate: DPoP error="use_dpop_nonce"`` from
the resource server, each with a ``DPoP-Nonce`` header. The nonce is kept per
origin in a cachetools ``TTLCache`` (servers rotate them; a stale one is simply
replaced by the next challenge) and the request is sent again once.

The key is per process: with a shared token store, the store key of a DPoP
route includes the key's thumbprint, so a replica never adopts a token bound
to another replica's key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable

from cachetools import TTLCache
from yarl import URL

#: how long a nonce is kept when no newer one arrives
NONCE_TTL = 300.0
_CHALLENGE = re.compile(r'^\s*DPoP\b.*\berror\s*=\s*"?use_dpop_nonce"?', re.IGNORECASE)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def htu(url: str) -> str:
    """The ``htu`` of a request to ``url``: without query and fragment (RFC 9449 4.2)."""
    return str(URL(url).with_query(None).with_fragment(None))


def origin(url: str) -> str:
    u = URL(url)
    return f"{u.scheme}://{u.host_port_subcomponent}"


class DPoPKey:
    """One route's DPoP key pair, proofs and nonces. Safe on one event loop."""

    def __init__(self, timer: Callable[[], float] = time.time) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self._key = ec.generate_private_key(ec.SECP256R1())
        numbers = self._key.public_key().public_numbers()
        self.jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
        }
        # RFC 7638: the required members, lexicographic, no whitespace
        canonical = json.dumps(self.jwk, sort_keys=True, separators=(",", ":")).encode()
        self.thumbprint = _b64(hashlib.sha256(canonical).digest())
        self._timer = timer
        self._nonces: TTLCache[str, str] = TTLCache(maxsize=64, ttl=NONCE_TTL, timer=timer)
        self._header = {"typ": "dpop+jwt", "jwk": self.jwk}

    def proof(self, method: str, url: str, access_token: str | None = None) -> str:
        """A fresh proof for one request (new ``jti``, ``iat`` now)."""
        import jwt

        claims: dict[str, object] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": htu(url),
            "iat": int(self._timer()),
        }
        nonce = self._nonces.get(origin(url))
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["ath"] = _b64(hashlib.sha256(access_token.encode("ascii")).digest())
        return jwt.encode(claims, self._key, algorithm="ES256", headers=self._header)

    def remember(self, url: str, nonce: str | None) -> bool:
        """Keep a ``DPoP-Nonce`` the server sent; True when it is a new one."""
        if not nonce or any(c in nonce for c in '\r\n"'):
            return False
        key = origin(url)
        if self._nonces.get(key) == nonce:
            return False
        self._nonces[key] = nonce
        return True

    def challenged(self, url: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """A resource server's 401 is a nonce challenge (and brought a new nonce)."""
        challenge = nonce = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"www-authenticate" and _CHALLENGE.match(value.decode("latin-1")):
                challenge = True
            elif lower == b"dpop-nonce":
                nonce = value.decode("latin-1").strip()
        return bool(challenge) and self.remember(url, nonce)
