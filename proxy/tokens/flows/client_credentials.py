"""OAuth2 client credentials (RFC 6749 section 4.4): the getpaid flow.

The body is RFC 6749's form encoding by default, or JSON (``body: json``) for
providers that want it (getpaid). The client authenticates in the body or with
HTTP Basic (``client_auth: basic``; id and secret form-encoded first, as RFC 6749
section 2.3.1 says). ``scope`` arrives already joined by the config; ``audience``
and ``extra`` fields are added as given.
"""

from __future__ import annotations

from proxy.config.model import ClientCredentialsAuth
from proxy.tokens.flows.client_auth import basic_auth
from proxy.tokens.flows.oauth2 import (
    Fields,
    OAuth2Flow,
    client_fields,
    form_fields,
    oauth2_token,
)
from proxy.tokens.token import Token, TokenFetchError


class ClientCredentialsFlow(OAuth2Flow[ClientCredentialsAuth]):
    """A token for the client itself, from ``client_id`` and ``client_secret``."""

    grant = "client_credentials"

    async def fetch(self, previous: Token | None, failure: TokenFetchError | None = None) -> Token:
        auth = self.auth
        fields: Fields = {"grant_type": "client_credentials"}
        headers = client_fields(auth, auth.token_url, fields, self.clock.time())
        if auth.scope:
            fields["scope"] = auth.scope
        if auth.audience:
            fields["audience"] = auth.audience
        return await self.exchange(
            fields, headers, how="client_credentials", json=auth.body == "json"
        )


#: the OAuth2 helpers, here before proxy.tokens.flows.oauth2 held them
__all__ = ["ClientCredentialsFlow", "basic_auth", "client_fields", "form_fields", "oauth2_token"]
