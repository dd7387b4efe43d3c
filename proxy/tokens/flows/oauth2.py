"""What the RFC 6749 flows share: client authentication, the form encoding, the
token request itself and the reading of its answer.

Client credentials, refresh token and JWT bearer differ only in the fields they
send; :meth:`OAuth2Flow.exchange` sends them. ``authproxy authorize`` uses the
helpers for its authorization code exchange.
"""

from __future__ import annotations

from typing import TypeVar

from proxy.config.model import ClientCredentialsAuth, JwtBearerAuth, RefreshTokenAuth
from proxy.tokens.flows.base import Flow
from proxy.tokens.flows.client_auth import ClientAuth
from proxy.tokens.flows.expiry import earliest, jwt_exp, parse_lifetime
from proxy.tokens.flows.http import request_json
from proxy.tokens.jsondoc import JSONObject
from proxy.tokens.token import Token, TokenFetchError

#: the auth settings of an RFC 6749 flow
OAuth2Auth = ClientCredentialsAuth | RefreshTokenAuth | JwtBearerAuth
AuthT = TypeVar("AuthT", bound=OAuth2Auth)

#: a token request's fields; a list value is sent as repeated fields (``resource``)
Fields = dict[str, object]


def client_fields(auth: OAuth2Auth, token_url: str, fields: Fields, now: float) -> dict[str, str]:
    """Add ``auth``'s client authentication and RFC 8707 ``resource`` to ``fields``;
    the headers it needs. ``fields`` values may be lists (sent as repeated fields)."""
    headers = ClientAuth.of(auth).apply(fields, token_url, now)
    if auth.resource:
        fields["resource"] = list(auth.resource)
    return headers


def form_fields(fields: Fields) -> list[tuple[str, str]]:
    """Form pairs; a ``resource`` list becomes repeated fields (RFC 8707 2)."""
    pairs: list[tuple[str, str]] = []
    for key, value in fields.items():
        if key == "resource" and isinstance(value, list):
            pairs.extend((key, str(v)) for v in value)
        else:
            pairs.append((key, _form_value(value)))
    return pairs


def _form_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return "" if value is None else str(value)


def oauth2_token(
    data: JSONObject,
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


class OAuth2Flow(Flow[AuthT]):
    """A flow that POSTs fields to ``auth.token_url`` and reads an RFC 6749 answer."""

    async def exchange(
        self,
        fields: Fields,
        headers: dict[str, str],
        *,
        how: str,
        json: bool = False,
        refresh_token: str | None = None,
    ) -> Token:
        """Send ``fields`` (the auth's ``extra`` added) as a form, or as JSON; the
        token of the answer, checked usable on arrival."""
        auth = self.auth
        fields.update(auth.extra)
        async with self.counted(self.grant) as req:
            data = await request_json(
                self.client,
                "POST",
                auth.token_url,
                headers=headers,
                form=None if json else form_fields(fields),
                json_body=fields if json else None,
                dpop=self.dpop,
                on_resend=req.resent,
            )
            now = self.clock.time()
            tok = oauth2_token(
                data, now=now, default_ttl=auth.default_ttl, how=how, refresh_token=refresh_token
            )
            return req.token(tok)
