"""Invoice.ng (seed 000): API key -> JWT; refresh by GET with the current bearer.

- ``POST /v1/authenticate`` with a JSON body ``{"api_key": ...}`` (Content-Type
  ``application/json`` required: anything else is 415) answers
  ``{"status": "ok", "token": JWT, "type": "bearer", "expiry": <epoch seconds>}``.
  A wrong key is 401, a missing one 400.
- ``GET /v1/token/refresh`` with ``Authorization: Bearer <current token>`` answers
  ``{"status": "ok", "refresh_token": <NEW JWT>, "type": "bearer", "expiry": ...}``
  and invalidates the presented token at once: it is rejected by the API and
  cannot be refreshed again.  An expired (but not invalidated) token can still be
  refreshed while ``clock.time() < its iat + refresh_window``.
- Every other path is the protected API.

Errors are ``{"status": "error", "message": ...}``.
"""

from __future__ import annotations

from aiohttp import web

from proxy.clock import Clock

from .base import (
    FakeProvider,
    TokenHandler,
    TokenRequest,
    bearer_token,
    json_response,
    parse_json_object,
)

DEFAULT_API_KEY = "5bf9f7943aa18e38c70aedb4a721057c"


def _error(status: int, message: str) -> web.Response:
    return json_response({"status": "error", "message": message}, status)


class InvoiceNg(FakeProvider):
    """Fake of api.invoice.ng; paths are those of the document (``/v1/...``)."""

    issuer = "https://api.invoice.ng/v1/authenticate"
    AUTHENTICATE = "/v1/authenticate"
    REFRESH = "/v1/token/refresh"

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        clock: Clock | None = None,
        *,
        token_ttl: int = 3600,
        refresh_window: int = 14 * 24 * 3600,
        account_id: int = 63,
        jwt_secret: str | None = None,
        single_session: bool = False,
    ) -> None:
        super().__init__(clock, jwt_secret=jwt_secret)
        #: strict: every login or refresh invalidates every older token (one
        #: session per API key), so replicas that fetch on their own revoke each other
        self.single_session = single_session
        self.api_key = api_key
        self.token_ttl = token_ttl
        self.refresh_window = refresh_window
        self.account_id = account_id

    def token_endpoints(self) -> dict[str, tuple[str, TokenHandler]]:
        return {
            self.AUTHENTICATE: ("authenticate", self._authenticate),
            self.REFRESH: ("refresh", self._refresh),
        }

    def api_unauthorized(self, reason: str) -> web.StreamResponse:
        return _error(401, reason)

    def _answer(self, key: str, grant: str, family: str | None) -> web.Response:
        if self.single_session:
            for older in list(self.access_tokens.values()):
                self.revoke_access(older, "superseded by a newer login or refresh")
        expiry = int(self.now()) + self.token_ttl
        access = self.issue_access_token(
            expires_at=expiry,
            grant=grant,
            claims={"sub": self.account_id},
            family=family,
        )
        if access.family is None:
            access.family = access.jti
        return json_response(
            {"status": "ok", key: access.token, "type": "bearer", "expiry": expiry}
        )

    async def _authenticate(
        self, request: web.Request, body: bytes, record: TokenRequest
    ) -> web.StreamResponse:
        record.grant = "login"
        if request.method != "POST":
            return _error(405, "Method not allowed")
        if request.content_type != "application/json":
            return _error(415, "Content-Type must be application/json")
        data = parse_json_object(body)
        if data is None:
            return _error(400, "Invalid JSON body")
        api_key = data.get("api_key")
        if not isinstance(api_key, str) or not api_key:
            return _error(400, "The api key field is required.")
        if api_key != self.api_key:
            return _error(401, "Invalid API key")
        self.logins += 1
        return self._answer("token", "login", None)

    async def _refresh(
        self, request: web.Request, body: bytes, record: TokenRequest
    ) -> web.StreamResponse:
        record.grant = "refresh"
        if request.method != "GET":
            return _error(405, "Method not allowed")
        token = bearer_token(request)
        if token is None:
            return _error(401, "Token not provided")
        access = self.access_tokens.get(token)
        if access is None or self.decode(token) is None:
            return _error(401, "Token is invalid")
        if access.revoked:
            return _error(401, "The token has been blacklisted")
        if self.now() >= access.issued_at + self.refresh_window:
            return _error(401, "Token has expired and can no longer be refreshed")
        self.revoke_access(access, "refreshed")
        self.refreshes += 1
        return self._answer("refresh_token", "refresh", access.family)
