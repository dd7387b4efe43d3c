"""OAuth2 client credentials (RFC 6749 section 4.4): the getpaid flow.

The body is RFC 6749's form encoding by default, or JSON (``body: json``) for
providers that want it (getpaid). The client authenticates in the body or with
HTTP Basic (``client_auth: basic``; id and secret form-encoded first, as RFC 6749
section 2.3.1 says). ``scope`` arrives already joined by the config; ``audience``
and ``extra`` fields are added as given.

The OAuth2 answer helpers here are shared with the refresh-token flow.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy.config.model import ClientCredentialsAuth
from proxy.tokens.flows.base import Flow
from proxy.tokens.flows.client_auth import ClientAuth, basic_auth
from proxy.tokens.flows.expiry import earliest, jwt_exp, parse_lifetime
from proxy.tokens.flows.http import request_json
from proxy.tokens.manager import Token, TokenFetchError

log = logging.getLogger("authproxy.flows")


def client_fields(auth: Any, token_url: str, fields: dict[str, Any], now: float) -> dict[str, str]:
    """Add ``auth``'s client authentication and RFC 8707 ``resource`` to ``fields``;
    the headers it needs. ``fields`` values may be lists (sent as repeated fields)."""
    headers = ClientAuth.of(auth).apply(fields, token_url, now)
    resource = getattr(auth, "resource", ())
    if resource:
        fields["resource"] = list(resource)
    return headers


def oauth2_token(
    data: dict[str, Any],
    *,
    now: float,
    default_ttl: float,
    how: str,
    refresh_token: str | None = None,
    what: str = "token endpoint",
) -> Token:
    """A :class:`Token` from an RFC 6749 answer (``access_token``, ``expires_in``, ...).

    ``refresh_token`` is kept when the answer brings no new one (no rotation).
    """
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenFetchError(f"{what} answer has no access_token", retryable=False)
    lifetime = parse_lifetime(data.get("expires_in"))
    expires_at = earliest(None if lifetime is None else now + lifetime, jwt_exp(access))
    if expires_at is None:
        expires_at = now + default_ttl
    new_refresh = data.get("refresh_token")
    if isinstance(new_refresh, str) and new_refresh:
        refresh_token = new_refresh
    kind = data.get("token_type")
    return Token(
        access_token=access,
        expires_at=expires_at,
        refresh_token=refresh_token,
        obtained_at=now,
        how=how,
        # RFC 9449 5: a DPoP-bound token says so; anything else is sent as a bearer
        token_type="DPoP" if isinstance(kind, str) and kind.lower() == "dpop" else "Bearer",
    )


class ClientCredentialsFlow(Flow[ClientCredentialsAuth]):
    """A token for the client itself, from ``client_id`` and ``client_secret``."""

    grant = "client_credentials"

    async def fetch(self, previous: Token | None) -> Token:
        auth = self.auth
        fields: dict[str, Any] = {"grant_type": "client_credentials"}
        headers = client_fields(auth, auth.token_url, fields, self.clock.time())
        if auth.scope:
            fields["scope"] = auth.scope
        if auth.audience:
            fields["audience"] = auth.audience
        fields.update(auth.extra)
        async with self.counted(self.grant) as req:
            if auth.body == "json":
                data = await request_json(
                    self.client,
                    "POST",
                    auth.token_url,
                    headers=headers,
                    json_body=fields,
                    dpop=self.dpop,
                    on_resend=req.resent,
                )
            else:
                form = form_fields(fields)
                data = await request_json(
                    self.client,
                    "POST",
                    auth.token_url,
                    headers=headers,
                    form=form,
                    dpop=self.dpop,
                    on_resend=req.resent,
                )
            return req.token(
                oauth2_token(
                    data,
                    now=self.clock.time(),
                    default_ttl=auth.default_ttl,
                    how="client_credentials",
                )
            )


def form_fields(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """Form pairs; a ``resource`` list becomes repeated fields (RFC 8707 2)."""
    pairs: list[tuple[str, str]] = []
    for key, value in fields.items():
        if key == "resource" and isinstance(value, list):
            pairs.extend((key, str(v)) for v in value)
        else:
            pairs.append((key, _form_value(value)))
    return pairs


__all__ = ["basic_auth", "client_fields", "form_fields", "oauth2_token"]


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return "" if value is None else str(value)
