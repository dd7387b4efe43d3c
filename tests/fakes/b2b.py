"""A B2B JWT API (seed 003): username/password login, rotating refresh, revocation,
IP allow-list, ``{success, data}`` envelope and ``{error: {name, code, message}}`` errors.

- ``POST /auth/login`` ``{"username", "password"}`` ->
  ``{"success": true, "data": {"access_token", "refresh_token", "access_expires_at",
  "refresh_expires_at", "client_id"}}`` (expiries ISO 8601 ``YYYY-MM-DDTHH:MM:SSZ``;
  access 1 h, refresh 7 d by default).
- ``POST /auth/refresh`` ``{"refresh_token"}`` -> a new pair, same envelope.  Rotating:
  the used refresh token is rejected afterwards (401 UNAUTHORIZED), and presenting an
  already-used one revokes its whole family (every refresh and access token descended
  from the same login).
- ``POST /auth/revoke`` ``{"refresh_token"}`` -> ``{"success": true, "data": {"revoked": bool}}``;
  invalidates that refresh token's family (the session), access tokens included.
- The protected API is everything under ``/api/`` (e.g. ``/api/v1/products``); other
  paths are 404 NOT_FOUND.
- ``ip_allowlist`` (addresses or CIDRs): when non-empty, login, refresh, revoke and the
  API answer 403 FORBIDDEN to any other peer address.

Errors: 400 VALIDATION_FAILURE (missing/invalid fields, or a body that is not
``application/json``), 400 SYNTAX_ERROR (invalid JSON), 401 UNAUTHORIZED, 403 FORBIDDEN.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web

from proxy.clock import Clock

from .base import (
    FakeProvider,
    RefreshToken,
    TokenHandler,
    TokenRequest,
    ip_allowed,
    json_response,
)

DEFAULT_USERNAME = "b2b-api-user"
DEFAULT_PASSWORD = "b2b-api-password"

_NAMES = {
    "VALIDATION_FAILURE": "ValidationException",
    "SYNTAX_ERROR": "SyntaxError",
    "UNAUTHORIZED": "UnauthorizedError",
    "FORBIDDEN": "ForbiddenError",
    "NOT_FOUND": "NotFoundError",
    "METHOD_NOT_ALLOWED": "MethodNotAllowedError",
}


def error(status: int, code: str, message: str) -> web.Response:
    """The provider's error envelope."""
    return json_response(
        {"error": {"name": _NAMES[code], "code": code, "message": message}}, status
    )


def iso_z(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class B2B(FakeProvider):
    """Fake of the B2B JWT API ({{host}} in the document)."""

    issuer = "https://b2b.example"
    LOGIN = "/auth/login"
    REFRESH = "/auth/refresh"
    REVOKE = "/auth/revoke"

    def __init__(
        self,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        clock: Clock | None = None,
        *,
        access_ttl: int = 3600,
        refresh_ttl: int = 7 * 24 * 3600,
        ip_allowlist: list[str] | None = None,
        client_id: int = 123456,
        jwt_secret: str | None = None,
    ) -> None:
        super().__init__(clock, jwt_secret=jwt_secret)
        self.username = username
        self.password = password
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.ip_allowlist: list[str] = list(ip_allowlist or [])
        self.client_id = client_id
        self.reuse_detections = 0  # already-used refresh tokens presented
        self.revocations = 0  # successful /auth/revoke calls
        self.forbidden = 0  # 403s answered because of the allow-list

    # ------------------------------------------------------------ routes

    def token_endpoints(self) -> dict[str, tuple[str, TokenHandler]]:
        return {
            self.LOGIN: ("login", self._login),
            self.REFRESH: ("refresh", self._refresh),
            self.REVOKE: ("revoke", self._revoke),
        }

    def is_api_path(self, path: str) -> bool:
        return path.startswith("/api/")

    def api_not_found(self, path: str) -> web.StreamResponse:
        return error(404, "NOT_FOUND", "Route not found")

    def api_unauthorized(self, reason: str) -> web.StreamResponse:
        return error(401, "UNAUTHORIZED", reason)

    async def api_precheck(self, request: web.Request) -> web.StreamResponse | None:
        return self._ip_check(request)

    # ------------------------------------------------------------ helpers

    def _ip_check(self, request: web.Request) -> web.Response | None:
        if ip_allowed(request.remote, self.ip_allowlist):
            return None
        self.forbidden += 1
        return error(403, "FORBIDDEN", "IP address not authorized")

    def _body(
        self, request: web.Request, body: bytes, fields: tuple[str, ...]
    ) -> dict[str, str] | web.Response:
        """The request's JSON fields, or the error envelope to answer."""
        rejection = self._ip_check(request)
        if rejection is not None:
            return rejection
        if request.method != "POST":
            return error(405, "METHOD_NOT_ALLOWED", "Method not allowed")
        if request.content_type != "application/json":
            return error(400, "VALIDATION_FAILURE", "Content-Type must be application/json")
        try:
            data: Any = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return error(400, "SYNTAX_ERROR", "Invalid JSON in request body")
        if not isinstance(data, dict):
            return error(400, "VALIDATION_FAILURE", "Request body must be an object")
        missing = [f for f in fields if not isinstance(data.get(f), str) or not data.get(f)]
        if missing:
            return error(
                400, "VALIDATION_FAILURE", f"Missing or invalid fields: {', '.join(missing)}"
            )
        return {f: data[f] for f in fields}

    def _pair(self, family: str, grant: str) -> web.Response:
        now = int(self.now())
        access_exp = now + self.access_ttl
        refresh_exp = now + self.refresh_ttl
        access = self.issue_access_token(
            expires_at=access_exp,
            grant=grant,
            claims={"sub": str(self.client_id), "typ": "access"},
            family=family,
        )
        refresh_jti = secrets.token_hex(16)
        refresh_value = self._sign(
            {
                "iss": self.issuer,
                "sub": str(self.client_id),
                "typ": "refresh",
                "iat": now,
                "exp": refresh_exp,
                "jti": refresh_jti,
                "fam": family,
            }
        )
        self.issued.append(refresh_value)
        self.refresh_tokens[refresh_value] = RefreshToken(
            token=refresh_value,
            issued_at=self.now(),
            expires_at=refresh_exp,
            family=family,
            client_id=str(self.client_id),
        )
        return json_response(
            {
                "success": True,
                "data": {
                    "access_token": access.token,
                    "refresh_token": refresh_value,
                    "access_expires_at": iso_z(access_exp),
                    "refresh_expires_at": iso_z(refresh_exp),
                    "client_id": self.client_id,
                },
            }
        )

    def _sign(self, payload: dict[str, Any]) -> str:
        return jwt.encode(payload, self.jwt_secret, algorithm="HS256")

    def revoke_family(self, family: str, reason: str) -> None:
        """Invalidate every refresh and access token descended from one login."""
        for refresh in self.refresh_tokens.values():
            if refresh.family == family and not refresh.revoked:
                refresh.revoked = True
                refresh.revoked_reason = reason
        for access in self.access_tokens.values():
            if access.family == family:
                self.revoke_access(access, reason)

    # ------------------------------------------------------------ endpoints

    async def _login(
        self, request: web.Request, body: bytes, record: TokenRequest
    ) -> web.StreamResponse:
        record.grant = "login"
        data = self._body(request, body, ("username", "password"))
        if isinstance(data, web.Response):
            return data
        if data["username"] != self.username or data["password"] != self.password:
            return error(401, "UNAUTHORIZED", "Invalid credentials")
        self.logins += 1
        return self._pair(secrets.token_hex(8), "login")

    async def _refresh(
        self, request: web.Request, body: bytes, record: TokenRequest
    ) -> web.StreamResponse:
        record.grant = "refresh"
        data = self._body(request, body, ("refresh_token",))
        if isinstance(data, web.Response):
            return data
        refresh = self.refresh_tokens.get(data["refresh_token"])
        if refresh is None:
            return error(401, "UNAUTHORIZED", "Invalid refresh token")
        if refresh.used:
            self.reuse_detections += 1
            self.revoke_family(refresh.family, "refresh token reuse")
            return error(401, "UNAUTHORIZED", "Refresh token has already been used")
        if refresh.revoked:
            return error(401, "UNAUTHORIZED", "Refresh token has been revoked")
        if refresh.expires_at is not None and self.now() >= refresh.expires_at:
            return error(401, "UNAUTHORIZED", "Refresh token has expired")
        refresh.used = True
        self.refreshes += 1
        return self._pair(refresh.family, "refresh")

    async def _revoke(
        self, request: web.Request, body: bytes, record: TokenRequest
    ) -> web.StreamResponse:
        record.grant = "revoke"
        data = self._body(request, body, ("refresh_token",))
        if isinstance(data, web.Response):
            return data
        refresh = self.refresh_tokens.get(data["refresh_token"])
        if refresh is None:
            return json_response({"success": True, "data": {"revoked": False}})
        self.revocations += 1
        self.revoke_family(refresh.family, "revoked")
        return json_response({"success": True, "data": {"revoked": True}})
