"""Invoiced (seed 001): OAuth2 authorization code with a form-encoded token endpoint.

- ``GET /oauth/authorize?response_type=code&client_id&redirect_uri&scope&state``
  (optionally ``code_challenge`` + ``code_challenge_method=S256``) answers 302 to
  ``redirect_uri?code=...&state=...``, or ``?error=access_denied&state=...`` when
  ``deny_consent`` is set.  An unknown client or a redirect_uri other than the
  registered one is a 400 page and never a redirect (RFC 6749 4.1.2.1).
- ``POST /oauth/access_token``, form-encoded only (anything else: 400
  ``{"error": "invalid_request"}``), client_id + client_secret in the body:

  - ``grant_type=authorization_code``: ``code`` (single use; a second use is
    ``invalid_grant`` and revokes what the code gave), ``redirect_uri`` (must match
    the one of the authorize request), ``code_verifier`` when a challenge was given.
  - ``grant_type=refresh_token``: ``refresh_token``.  With ``rotate_refresh`` (the
    default) every refresh issues a new refresh token and the used one is then
    ``invalid_grant``; without it the same refresh token is returned.

  Answer ``{"token_type": "bearer", "expires_in": 3600, "access_token": JWT,
  "refresh_token": "def502..."}``.  Bad client: 401 ``invalid_client``.
- Every other path is the protected API (api.invoiced.com in reality).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

from aiohttp import web

from proxy.clock import Clock

from .base import (
    AccessToken,
    FakeProvider,
    RefreshToken,
    TokenHandler,
    TokenRequest,
    json_response,
)

DEFAULT_CLIENT_ID = "BVHsLbmQaz3pn1yyAUcQ8pH8"
DEFAULT_CLIENT_SECRET = "invoiced-test-client-secret"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8765/callback"
SCOPES = frozenset({"read", "write", "read_write"})
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    expires_at: float
    code_challenge: str | None = None
    used: bool = False
    access_tokens: list[AccessToken] = field(default_factory=list)
    family: str = ""


def _oauth_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response(
        {"error": error, "error_description": description}, status, {**_NO_STORE, **(headers or {})}
    )


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of ``verifier``."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class Invoiced(FakeProvider):
    """Fake of invoiced.com OAuth (authorize + access_token) and api.invoiced.com."""

    issuer = "https://invoiced.com"
    AUTHORIZE = "/oauth/authorize"
    TOKEN = "/oauth/access_token"

    def __init__(
        self,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        clock: Clock | None = None,
        *,
        token_ttl: int = 3600,
        rotate_refresh: bool = True,
        refresh_ttl: int | None = None,
        code_ttl: int = 600,
        allow_basic_auth: bool = False,
        tenant: str = "tenant:167",
        jwt_secret: str | None = None,
    ) -> None:
        super().__init__(clock, jwt_secret=jwt_secret)
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.token_ttl = token_ttl
        self.rotate_refresh = rotate_refresh
        self.refresh_ttl = refresh_ttl
        self.code_ttl = code_ttl
        self.allow_basic_auth = allow_basic_auth
        self.tenant = tenant
        self.deny_consent = False
        self.authorizations = 0  # hits on /oauth/authorize
        self.code_exchanges = 0  # successful authorization_code grants (also counted in logins)
        self.codes: dict[str, AuthorizationCode] = {}
        self.issued_codes: list[str] = []

    # ------------------------------------------------------------ routes

    def token_endpoints(self) -> dict[str, tuple[str, TokenHandler]]:
        return {self.TOKEN: ("access_token", self._access_token)}

    def extra_routes(self, app: web.Application) -> None:
        app.router.add_route("*", self.AUTHORIZE, self._authorize)

    def is_api_path(self, path: str) -> bool:
        return not path.startswith("/oauth/")

    def api_unauthorized(self, reason: str) -> web.StreamResponse:
        return json_response(
            {"type": "authentication_error", "message": f"Unauthorized: {reason}"},
            401,
            {"WWW-Authenticate": 'Bearer realm="Invoiced"'},
        )

    def api_not_found(self, path: str) -> web.StreamResponse:
        return json_response({"type": "invalid_request", "message": "Not found"}, 404)

    # ------------------------------------------------------------ helpers for tests

    def authorize_url(
        self,
        *,
        redirect_uri: str | None = None,
        scope: str = "read_write",
        state: str | None = None,
        code_challenge: str | None = None,
    ) -> str:
        """The authorize URL on this fake (``base_url`` must be set by ``serve``)."""
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri or self.redirect_uri,
            "scope": scope,
        }
        if state is not None:
            params["state"] = state
        if code_challenge is not None:
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        return f"{self.base_url}{self.AUTHORIZE}?{urlencode(params)}"

    def issue_code(
        self,
        *,
        redirect_uri: str | None = None,
        scope: str = "read_write",
        code_challenge: str | None = None,
    ) -> str:
        """An authorization code, as if the user had consented."""
        code = secrets.token_urlsafe(24)
        self.codes[code] = AuthorizationCode(
            code=code,
            client_id=self.client_id,
            redirect_uri=redirect_uri or self.redirect_uri,
            scope=scope,
            expires_at=self.now() + self.code_ttl,
            code_challenge=code_challenge,
            family=secrets.token_hex(8),
        )
        self.issued_codes.append(code)
        return code

    def grant_refresh_token(self, scope: str = "read_write") -> str:
        """A valid refresh token, as if consent and code exchange had happened."""
        return self._new_refresh(scope, secrets.token_hex(8)).token

    def _new_refresh(self, scope: str, family: str) -> RefreshToken:
        now = self.now()
        token = self.new_opaque_token("def50200", 96)
        record = RefreshToken(
            token=token,
            issued_at=now,
            expires_at=None if self.refresh_ttl is None else now + self.refresh_ttl,
            family=family,
            client_id=self.client_id,
            scope=scope,
        )
        self.refresh_tokens[token] = record
        return record

    def _issue(
        self, scope: str, family: str, grant: str, refresh: RefreshToken | None
    ) -> tuple[web.Response, AccessToken]:
        now = self.now()
        access = self.issue_access_token(
            expires_at=now + self.token_ttl,
            grant=grant,
            claims={
                "aud": self.client_id,
                "nbf": int(now),
                "sub": self.tenant,
                "scopes": scope.split(),
            },
            family=family,
        )
        if refresh is None:
            refresh = self._new_refresh(scope, family)
        response = json_response(
            {
                "token_type": "bearer",
                "expires_in": self.token_ttl,
                "access_token": access.token,
                "refresh_token": refresh.token,
            },
            200,
            _NO_STORE,
        )
        return response, access

    # ------------------------------------------------------------ authorize

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        self.authorizations += 1
        if request.method != "GET":
            return web.Response(status=405, text="Method Not Allowed")
        query = request.rel_url.query
        for name in set(query.keys()):
            if len(query.getall(name)) > 1:
                return web.Response(status=400, text=f"Repeated parameter: {name}")
        client_id = query.get("client_id")
        redirect_uri = query.get("redirect_uri")
        if client_id != self.client_id:
            return web.Response(status=400, text="Invalid client_id")
        if redirect_uri != self.redirect_uri:
            return web.Response(status=400, text="redirect_uri does not match the registered one")
        state = query.get("state")

        def redirect(params: dict[str, str]) -> web.Response:
            if state is not None:
                params["state"] = state
            sep = "&" if "?" in redirect_uri else "?"
            return web.Response(
                status=302, headers={"Location": redirect_uri + sep + urlencode(params)}
            )

        if query.get("response_type") != "code":
            return redirect({"error": "unsupported_response_type"})
        scope = query.get("scope", "")
        if not scope.split() or any(s not in SCOPES for s in scope.split()):
            return redirect({"error": "invalid_scope"})
        challenge = query.get("code_challenge")
        method = query.get("code_challenge_method")
        if challenge is not None and method != "S256":
            return redirect({"error": "invalid_request", "error_description": "S256 required"})
        if challenge is None and method is not None:
            return redirect({"error": "invalid_request"})
        if self.deny_consent:
            return redirect({"error": "access_denied"})
        code = self.issue_code(redirect_uri=redirect_uri, scope=scope, code_challenge=challenge)
        return redirect({"code": code})

    # ------------------------------------------------------------ token endpoint

    def _client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        client_id = form.get("client_id")
        client_secret = form.get("client_secret")
        auth = request.headers.get("Authorization", "")
        if self.allow_basic_auth and auth[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            client_id, _, client_secret = decoded.partition(":")
        return client_id == self.client_id and client_secret == self.client_secret

    async def _access_token(
        self, request: web.Request, body: bytes, record: TokenRequest
    ) -> web.StreamResponse:
        if request.method != "POST":
            return _oauth_error(405, "invalid_request", "POST required")
        if request.content_type != "application/x-www-form-urlencoded":
            return _oauth_error(
                400, "invalid_request", "The request body must be application/x-www-form-urlencoded"
            )
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return _oauth_error(400, "invalid_request", "Malformed form body")
        if any(len(values) > 1 for values in parsed.values()):
            return _oauth_error(400, "invalid_request", "Repeated parameter")
        form = {key: values[0] for key, values in parsed.items()}
        grant_type = form.get("grant_type")
        record.grant = grant_type
        if not grant_type:
            return _oauth_error(400, "invalid_request", "grant_type is required")
        if not self._client_ok(request, form):
            basic = request.headers.get("Authorization", "")[:6].lower() == "basic "
            challenge = {"WWW-Authenticate": 'Basic realm="Invoiced"'} if basic else {}
            return _oauth_error(401, "invalid_client", "Client authentication failed", challenge)
        if grant_type == "authorization_code":
            return self._code_grant(form)
        if grant_type == "refresh_token":
            return self._refresh_grant(form)
        return _oauth_error(400, "unsupported_grant_type", f"Unsupported grant {grant_type!r}")

    def _code_grant(self, form: dict[str, str]) -> web.Response:
        code_value = form.get("code")
        if not code_value:
            return _oauth_error(400, "invalid_request", "code is required")
        if "redirect_uri" not in form:
            return _oauth_error(400, "invalid_request", "redirect_uri is required")
        code = self.codes.get(code_value)
        if code is None:
            return _oauth_error(400, "invalid_grant", "Unknown authorization code")
        if code.used:
            for access in code.access_tokens:
                self.revoke_access(access, "authorization code reused")
            for refresh in self.refresh_tokens.values():
                if refresh.family == code.family:
                    refresh.revoked = True
                    refresh.revoked_reason = "authorization code reused"
            return _oauth_error(400, "invalid_grant", "Authorization code already used")
        if self.now() >= code.expires_at:
            return _oauth_error(400, "invalid_grant", "Authorization code expired")
        if code.client_id != self.client_id:
            return _oauth_error(400, "invalid_grant", "Code was issued to another client")
        if form["redirect_uri"] != code.redirect_uri:
            return _oauth_error(400, "invalid_grant", "redirect_uri does not match")
        if code.code_challenge is not None:
            verifier = form.get("code_verifier")
            if not verifier or s256(verifier) != code.code_challenge:
                return _oauth_error(400, "invalid_grant", "PKCE verification failed")
        code.used = True
        self.logins += 1
        self.code_exchanges += 1
        response, access = self._issue(code.scope, code.family, "authorization_code", None)
        code.access_tokens.append(access)
        return response

    def _refresh_grant(self, form: dict[str, str]) -> web.Response:
        value = form.get("refresh_token")
        if not value:
            return _oauth_error(400, "invalid_request", "refresh_token is required")
        refresh = self.refresh_tokens.get(value)
        if refresh is None or not refresh.usable_at(self.now()):
            return _oauth_error(400, "invalid_grant", "Invalid refresh token")
        if refresh.client_id != self.client_id:
            return _oauth_error(400, "invalid_grant", "Refresh token was issued to another client")
        self.refreshes += 1
        if self.rotate_refresh:
            refresh.used = True
            return self._issue(refresh.scope, refresh.family, "refresh", None)[0]
        return self._issue(refresh.scope, refresh.family, "refresh", refresh)[0]
