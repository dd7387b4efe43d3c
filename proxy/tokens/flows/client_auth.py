"""How a client authenticates at a token endpoint (RFC 6749 2.3, RFC 7523 2.2,
RFC 8705 2.1), by the registered names of RFC 8414's
``token_endpoint_auth_methods_supported``:

- ``client_secret_basic`` (alias ``basic``): HTTP Basic, id and secret
  form-encoded first (RFC 6749 2.3.1);
- ``client_secret_post`` (alias ``body``, the default): both in the body;
- ``none``: a public client, ``client_id`` alone in the body;
- ``client_secret_jwt``: an HS256 assertion signed with the client secret;
- ``private_key_jwt``: an assertion signed with ``private_key`` (RS256 for RSA,
  ES256/ES384/ES512 for EC by curve, EdDSA for Ed25519), ``kid`` = ``key_id``;
- ``tls_client_auth``: the route's client certificate (``tls.client_cert``)
  authenticates; ``client_id`` goes in the body.

An assertion is fresh for every request: a new random ``jti``, ``iss`` = ``sub``
= the client id, ``aud`` = the token endpoint, ``exp`` a minute ahead. RFC 7523
3 lets a server refuse a ``jti`` it has seen, so one is never reused.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from urllib.parse import quote

from proxy.config.model import ClientCredentialsAuth, JwtBearerAuth, RefreshTokenAuth
from proxy.jose import ALIASES, load_private_key, sign

#: RFC 7523 section 2.2
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: the lifetime of a client assertion: short, as RFC 7523 3 asks
ASSERTION_TTL = 60


def basic_auth(client_id: str, client_secret: str) -> str:
    """The ``Authorization: Basic`` value of RFC 6749 section 2.3.1."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


@dataclass(frozen=True)
class ClientAuth:
    """One route's client authentication, ready to apply to token requests."""

    method: str
    client_id: str
    client_secret: str
    #: the loaded ``private_key`` (a ``cryptography`` key), for ``private_key_jwt``
    private_key: object = None
    key_id: str | None = None

    @classmethod
    def of(cls, auth: ClientCredentialsAuth | RefreshTokenAuth | JwtBearerAuth) -> ClientAuth:
        """From an RFC 6749 flow's auth config: ``client_id``, ``client_secret``,
        ``client_auth``, ``private_key`` and ``key_id``."""
        method = ALIASES.get(auth.client_auth, auth.client_auth)
        pem = auth.private_key
        key = load_private_key(pem) if pem and method == "private_key_jwt" else None
        return cls(method, auth.client_id, auth.client_secret, key, auth.key_id)

    def apply(self, fields: dict[str, object], token_url: str, now: float) -> dict[str, str]:
        """Add client authentication to ``fields``; returns the headers it needs."""
        if self.method == "client_secret_basic":
            return {"Authorization": basic_auth(self.client_id, self.client_secret)}
        if self.method == "client_secret_post":
            fields["client_id"] = self.client_id
            fields["client_secret"] = self.client_secret
        elif self.method in ("client_secret_jwt", "private_key_jwt"):
            key = self.client_secret if self.method == "client_secret_jwt" else self.private_key
            fields["client_id"] = self.client_id
            fields["client_assertion_type"] = ASSERTION_TYPE
            fields["client_assertion"] = sign(self.claims(token_url, now), key, self.key_id)
        else:  # none, tls_client_auth: the id alone (the certificate authenticates)
            fields["client_id"] = self.client_id
        return {}

    def claims(self, audience: str, now: float) -> dict[str, object]:
        """The claims of a client assertion (RFC 7523 section 3)."""
        issued = int(now)
        return {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "jti": secrets.token_urlsafe(24),
            "iat": issued,
            "exp": issued + ASSERTION_TTL,
        }
