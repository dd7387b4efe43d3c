"""The JWT bearer grant (RFC 7523 section 2.1): a signed assertion for a token.

Government and B2B APIs use it (Google service accounts, Norway's Maskinporten):
the client signs ``claims`` (``iss``, ``sub``, ``aud``, ``scope``, any extra
claim) with ``private_key``, and sends it as ``assertion`` with
``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``. authproxy adds a
fresh ``jti``, ``iat`` and ``exp`` (``assertion_ttl`` ahead) to every one, as
RFC 7523 section 3 asks. The client may also authenticate (``client_auth``).
"""

from __future__ import annotations

import secrets

from proxy.config.model import JwtBearerAuth
from proxy.jose import load_private_key, sign
from proxy.tokens.flows.oauth2 import Fields, OAuth2Flow, client_fields
from proxy.tokens.token import Token, TokenFetchError

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class JwtBearerFlow(OAuth2Flow[JwtBearerAuth]):
    """Access tokens for a signed assertion; nothing to refresh, a new one each time."""

    grant = "jwt_bearer"

    def assertion(self, now: float) -> str:
        auth = self.auth
        issued = int(now)
        claims: dict[str, object] = dict(auth.claims)
        claims.update(
            jti=secrets.token_urlsafe(24), iat=issued, exp=issued + int(auth.assertion_ttl)
        )
        return sign(claims, load_private_key(auth.private_key), auth.key_id)

    async def fetch(self, previous: Token | None, failure: TokenFetchError | None = None) -> Token:
        auth = self.auth
        now = self.clock.time()
        fields: Fields = {"grant_type": GRANT_TYPE, "assertion": self.assertion(now)}
        headers: dict[str, str] = {}
        if auth.client_id:
            headers = client_fields(auth, auth.token_url, fields, now)
        elif auth.resource:
            fields["resource"] = list(auth.resource)
        if auth.scope:
            fields["scope"] = auth.scope
        return await self.exchange(fields, headers, how="jwt_bearer")
