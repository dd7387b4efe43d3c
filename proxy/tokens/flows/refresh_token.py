"""OAuth2 refresh token grant (RFC 6749 section 6): the Invoiced flow.

The refresh token comes from the previous token (the rotated one, which the
manager saved to the store before using it), else from the config; with
neither, a person must run ``authproxy authorize`` once (:class:`NeedsConsent`).
The body is form-encoded, as RFC 6749 requires and Invoiced insists.
"""

from __future__ import annotations

from proxy.config.model import RefreshTokenAuth
from proxy.tokens.flows.oauth2 import Fields, OAuth2Flow, client_fields
from proxy.tokens.token import NeedsConsent, Token, TokenFetchError


class RefreshTokenFlow(OAuth2Flow[RefreshTokenAuth]):
    """Access tokens from a long-lived (possibly rotating) refresh token."""

    grant = "refresh_token"

    async def fetch(self, previous: Token | None, failure: TokenFetchError | None = None) -> Token:
        auth = self.auth
        refresh = (previous.refresh_token if previous is not None else None) or auth.refresh_token
        if not refresh:
            raise NeedsConsent(self.route)
        fields: Fields = {"grant_type": "refresh_token", "refresh_token": refresh}
        headers = client_fields(auth, auth.token_url, fields, self.clock.time())
        try:
            return await self.exchange(fields, headers, how="refresh", refresh_token=refresh)
        except TokenFetchError as exc:
            if exc.error_code == "invalid_grant":
                # The refresh token is dead (revoked, expired, or already rotated):
                # only a new consent helps, so say so.
                raise TokenFetchError(
                    f"{exc.message}: the refresh token was refused; "
                    f"run `authproxy authorize {self.route}`",
                    status=exc.status,
                    retryable=False,
                    error_code=exc.error_code,
                    grant=exc.grant,
                ) from None
            raise
