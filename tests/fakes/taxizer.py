"""Taxizer (seed 002): clientId/clientSecret -> jwtToken + refreshToken.

- ``POST /v1/Auth/Connect`` (exact path) with a JSON body
  ``{"clientId": ..., "clientSecret": ...}`` answers the documented body::

      {"appId", "appName", "accountId", "accountName", "username",
       "jwtToken", "jwtTokenExpireAtUTC": "2024-09-15T12:28:18.789Z",
       "refreshToken", "refreshTokenExpireAtUTC"}

  Incorrect clientId/clientSecret: 400.  Missing fields or invalid JSON: 400
  validation problem details; a non-JSON Content-Type: 415 (ASP.NET behaviour).
- The document gives no refresh endpoint, so there is none: the refresh token
  is issued (and recorded in ``issued``) but nothing accepts it.
- Every other path is the protected API; its 401 is an empty body with a
  ``WWW-Authenticate: Bearer ...`` header, as ASP.NET's JwtBearer answers.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta

from aiohttp import web

from proxy.clock import Clock

from .base import (
    FakeProvider,
    RefreshToken,
    TokenHandler,
    TokenRequest,
    json_response,
    parse_json_object,
)

DEFAULT_CLIENT_ID = "taxizer-test-client-id"
DEFAULT_CLIENT_SECRET = "taxizer-test-client-secret"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_JSON_TYPES = ("application/json", "text/json")


def iso_ms(epoch_ms: int) -> str:
    """``2024-09-15T12:28:18.789Z`` for an instant in integral milliseconds."""
    moment = _EPOCH + timedelta(milliseconds=epoch_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def _problem(status: int, title: str, **extra: object) -> web.Response:
    body: dict[str, object] = {
        "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
        "title": title,
        "status": status,
        "traceId": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00",
    }
    body.update(extra)
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/problem+json"
    )


class Taxizer(FakeProvider):
    """Fake of apistaging.taxizer.com."""

    issuer = "https://apistaging.taxizer.com"
    CONNECT = "/v1/Auth/Connect"

    def __init__(
        self,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        clock: Clock | None = None,
        *,
        token_ttl: int = 3600,
        refresh_ttl: int = 7 * 24 * 3600,
        app_name: str = "InvoiceApp",
        account_id: str = "acc12345",
        account_name: str = "MainAccount",
        username: str = "user2024",
        jwt_secret: str | None = None,
    ) -> None:
        super().__init__(clock, jwt_secret=jwt_secret)
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.refresh_ttl = refresh_ttl
        self.app_id = str(uuid.uuid4())
        self.app_name = app_name
        self.account_id = account_id
        self.account_name = account_name
        self.username = username

    def token_endpoints(self) -> dict[str, tuple[str, TokenHandler]]:
        return {self.CONNECT: ("connect", self._connect)}

    def api_unauthorized(self, reason: str) -> web.StreamResponse:
        if reason.startswith("missing"):
            challenge = "Bearer"
        else:
            challenge = f'Bearer error="invalid_token", error_description="{reason}"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    async def _connect(
        self, request: web.Request, body: bytes, record: TokenRequest
    ) -> web.StreamResponse:
        record.grant = "login"
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        ctype = request.content_type
        if ctype not in _JSON_TYPES and not (
            ctype.startswith("application/") and ctype.endswith("+json")
        ):
            return _problem(415, "Unsupported Media Type")
        data = parse_json_object(body)
        if data is None:
            return _problem(
                400,
                "One or more validation errors occurred.",
                errors={"$": ["The JSON value could not be converted to ConnectRequest."]},
            )
        errors: dict[str, list[str]] = {}
        for field_name, label in (("clientId", "ClientId"), ("clientSecret", "ClientSecret")):
            value = data.get(field_name)
            if not isinstance(value, str) or not value:
                errors[label] = [f"The {label} field is required."]
        if errors:
            return _problem(400, "One or more validation errors occurred.", errors=errors)
        if data["clientId"] != self.client_id or data["clientSecret"] != self.client_secret:
            return _problem(400, "Bad Request", detail="The clientId or clientSecret is incorrect.")
        self.logins += 1
        now = self.now()
        jwt_ms = math.floor((now + self.token_ttl) * 1000)
        refresh_ms = math.floor((now + self.refresh_ttl) * 1000)
        access = self.issue_access_token(
            expires_at=jwt_ms / 1000,
            grant="login",
            claims={
                "sub": self.app_id,
                "name": self.username,
                "accountId": self.account_id,
            },
        )
        refresh = self.new_opaque_token("", 16)
        # issued and recorded, but no endpoint accepts it (the document has none)
        self.refresh_tokens[refresh] = RefreshToken(
            token=refresh,
            issued_at=now,
            expires_at=refresh_ms / 1000,
            family=access.jti,
            client_id=self.client_id,
        )
        return json_response(
            {
                "appId": self.app_id,
                "appName": self.app_name,
                "accountId": self.account_id,
                "accountName": self.account_name,
                "username": self.username,
                "jwtToken": access.token,
                "jwtTokenExpireAtUTC": iso_ms(jwt_ms),
                "refreshToken": refresh,
                "refreshTokenExpireAtUTC": iso_ms(refresh_ms),
            }
        )
