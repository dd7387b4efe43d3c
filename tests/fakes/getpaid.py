"""getpaid (seed 004): OAuth2 client credentials with a JSON body, audience and scope.

- ``POST /oauth/token`` with a JSON body only (any other Content-Type: 415
  ``{"error": "invalid_request"}``): ``client_id``, ``client_secret``, ``audience``,
  ``grant_type=client_credentials``, ``scope`` (space separated) ->
  ``{"access_token": JWT (aud, scope), "token_type": "bearer", "expires_in": 3600}``.
  Wrong ``audience`` (not ``provider.audience``): 403 ``access_denied``; bad client:
  401 ``invalid_client``; other grant types: 400 ``unsupported_grant_type``; a scope
  outside ``allowed_scopes`` (when set): 403 ``access_denied``.
- Every other path is the protected API: the token's ``aud`` must equal the current
  ``provider.audience`` (401 ``invalid_token`` otherwise); with ``required_scope`` set,
  a token without it is 403 ``insufficient_scope``.
"""

from __future__ import annotations

from aiohttp import web

from proxy.clock import Clock

from .base import (
    AccessToken,
    FakeProvider,
    TokenHandler,
    TokenRequest,
    json_response,
    parse_json_object,
)

LIVE_AUDIENCE = "https://api.getpaid.io"
SANDBOX_AUDIENCE = "https://api.sandbox.getpaid.io"
DEFAULT_CLIENT_ID = "getpaid-test-client-id"
DEFAULT_CLIENT_SECRET = "getpaid-test-client-secret"
DEFAULT_SCOPE = "accounts:read_write invoices:read_write"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return json_response({"error": error, "error_description": description}, status, _NO_STORE)


class GetPaid(FakeProvider):
    """Fake of auth.getpaid.io (token) and api.getpaid.io (API) on one app."""

    issuer = "https://auth.getpaid.io/"
    TOKEN = "/oauth/token"

    def __init__(
        self,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        clock: Clock | None = None,
        *,
        audience: str | None = None,
        sandbox: bool = False,
        token_ttl: int = 3600,
        allowed_scopes: set[str] | None = None,
        required_scope: str | None = None,
        jwt_secret: str | None = None,
    ) -> None:
        super().__init__(clock, jwt_secret=jwt_secret)
        self.client_id = client_id
        self.client_secret = client_secret
        self.audience = audience or (SANDBOX_AUDIENCE if sandbox else LIVE_AUDIENCE)
        self.token_ttl = token_ttl
        self.allowed_scopes = allowed_scopes
        self.required_scope = required_scope

    def token_endpoints(self) -> dict[str, tuple[str, TokenHandler]]:
        return {self.TOKEN: ("token", self._token)}

    def is_api_path(self, path: str) -> bool:
        return not path.startswith("/oauth/")

    def api_unauthorized(self, reason: str) -> web.StreamResponse:
        return json_response(
            {"error": "invalid_token", "error_description": reason},
            401,
            {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'},
        )

    def check_token(self, token: AccessToken, request: web.Request) -> web.StreamResponse | None:
        if token.claims.get("aud") != self.audience:
            return self.api_unauthorized("invalid audience")
        need = self.required_scope
        if need and need not in str(token.claims.get("scope", "")).split():
            challenge = f'Bearer error="insufficient_scope", scope="{need}"'
            return json_response(
                {"error": "insufficient_scope", "error_description": f"{need} required"},
                403,
                {"WWW-Authenticate": challenge},
            )
        return None

    async def _token(
        self, request: web.Request, body: bytes, record: TokenRequest
    ) -> web.StreamResponse:
        if request.method != "POST":
            return _oauth_error(405, "invalid_request", "POST required")
        if request.content_type != "application/json":
            return _oauth_error(415, "invalid_request", "Content-Type must be application/json")
        data = parse_json_object(body)
        if data is None:
            return _oauth_error(400, "invalid_request", "Invalid JSON body")
        grant_type = data.get("grant_type")
        record.grant = grant_type if isinstance(grant_type, str) else None
        if not grant_type:
            return _oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
        if grant_type != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", f"Unsupported grant: {grant_type}")
        if (
            data.get("client_id") != self.client_id
            or data.get("client_secret") != self.client_secret
        ):
            return _oauth_error(401, "invalid_client", "Unauthorized")
        audience = data.get("audience")
        if not audience:
            return _oauth_error(403, "access_denied", "No audience parameter was provided")
        if audience != self.audience:
            return _oauth_error(
                403, "access_denied", f"Service not enabled within domain: {audience}"
            )
        scope = data.get("scope")
        if scope is None:
            scope = " ".join(sorted(self.allowed_scopes or ()))
        if not isinstance(scope, str):
            return _oauth_error(400, "invalid_request", "scope must be a string")
        if self.allowed_scopes is not None:
            extra = [s for s in scope.split() if s not in self.allowed_scopes]
            if extra:
                return _oauth_error(403, "access_denied", f"Scope not allowed: {' '.join(extra)}")
        self.logins += 1
        now = self.now()
        access = self.issue_access_token(
            expires_at=now + self.token_ttl,
            grant="client_credentials",
            claims={
                "aud": self.audience,
                "scope": scope,
                "sub": f"{self.client_id}@clients",
                "azp": self.client_id,
                "gty": "client-credentials",
            },
        )
        return json_response(
            {"access_token": access.token, "token_type": "bearer", "expires_in": self.token_ttl},
            200,
            _NO_STORE,
        )
