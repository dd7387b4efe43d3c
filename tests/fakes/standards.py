"""A strict OAuth 2.0 authorization server written from the RFCs, for the
standards authproxy speaks beyond the seed providers (issue 13).

Behaviour copied from real servers, where the RFCs leave a choice:

- each client is registered with exactly one ``token_endpoint_auth_method``
  and is refused (401 ``invalid_client``) when it authenticates another way,
  or with two ways at once (RFC 6749 2.3): as node oidc-provider does;
- client assertions (RFC 7523 2.2 / 3): ``iss`` = ``sub`` = the client id,
  ``aud`` must name the token endpoint (oidc-provider also takes the issuer),
  ``exp`` required and at most 10 minutes ahead, ``jti`` required and never
  seen before (replay -> ``invalid_client``): Authlib's ``JWTBearerClientAssertion``
  and oidc-provider both check these;
- the JWT bearer grant (RFC 7523 2.1 / 3): the assertion is verified with the
  key registered for its ``iss``; ``aud`` must be the issuer or the token
  endpoint; ``exp`` required; a replayed ``jti`` is ``invalid_grant`` (Keycloak,
  Google's token endpoint);
- resource indicators (RFC 8707 2): every ``resource`` must be an absolute URI
  without a fragment and one the server knows, else 400 ``invalid_target``
  (oidc-provider's resourceIndicators feature); the token's ``aud`` is the list;
- metadata (RFC 8414 3, OpenID Connect Discovery 1.0 4) at both well-known
  paths, with the issuer equal to the URL it was fetched under;
- the token endpoint takes only POST with
  ``application/x-www-form-urlencoded`` (RFC 6749 3.2);
- DPoP (RFC 9449 4.3, 7.1, 8, 9): a proof is checked for ``typ`` dpop+jwt, an
  asymmetric ``alg``, a public ``jwk`` only, its signature, ``htm``, ``htu``
  (no query), ``iat`` within a minute, a ``jti`` never seen, ``ath`` at the
  resource server, and the nonce when one is required; a bound token has
  ``cnf.jkt`` and ``token_type: DPoP``, and is refused as a bearer. As
  oidc-provider and Keycloak do: the nonce challenges are a 400 ``use_dpop_nonce``
  at the token endpoint and a 401 ``WWW-Authenticate: DPoP error="use_dpop_nonce"``
  at the API, each with ``DPoP-Nonce``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import jwt
from aiohttp import web

from .base import AccessToken, FakeProvider, TokenHandler, TokenRequest, json_response

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass
class Client:
    client_id: str
    method: str  # token_endpoint_auth_method
    secret: str = ""
    public_key: Any = None  # for private_key_jwt
    key_id: str | None = None
    tls_subject: str | None = None  # for tls_client_auth: the certificate's CN


@dataclass
class Issuer:
    """A trusted assertion issuer for the jwt-bearer grant (a service account)."""

    public_key: Any
    subjects: set[str] = field(default_factory=set)


def _error(status: int, error: str, description: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="token"'} if status == 401 else None
    return json_response({"error": error, "error_description": description}, status, headers)


class StandardsServer(FakeProvider):
    """An RFC 6749 / 7523 / 8707 / 8414 authorization server with a protected API."""

    TOKEN = "/token"

    def __init__(self, clock: Any = None, *, token_ttl: int = 3600) -> None:
        super().__init__(clock)
        self.token_ttl = token_ttl
        self.clients: dict[str, Client] = {}
        self.issuers: dict[str, Issuer] = {}
        self.resources: set[str] = {"https://api.example/", "https://other.example/"}
        self.seen_jti: set[str] = set()
        #: what each token request authenticated as and with: (client_id, method)
        self.authenticated: list[tuple[str, str]] = []
        self.metadata_requests = 0
        self.metadata_overrides: dict[str, Any] = {}
        self.peer_cert: dict[str, Any] | None = None
        #: DPoP: nonces demanded at the token endpoint / the API (None: none needed)
        self.token_nonce: str | None = None
        self.api_nonce: str | None = None
        self.dpop_proofs: list[dict[str, Any]] = []
        self.dpop_problems: list[str] = []

    @property  # type: ignore[override]
    def issuer(self) -> str:
        return (self.base_url or "https://standards.invalid") + "/"

    @property
    def token_endpoint(self) -> str:
        return (self.base_url or "") + self.TOKEN

    def token_endpoints(self) -> dict[str, tuple[str, TokenHandler]]:
        return {self.TOKEN: ("token", self._token)}

    def extra_routes(self, app: web.Application) -> None:
        app.router.add_get("/.well-known/openid-configuration", self._metadata)
        app.router.add_get("/.well-known/oauth-authorization-server", self._metadata)

    def is_api_path(self, path: str) -> bool:
        return path.startswith("/api/")

    async def _metadata(self, request: web.Request) -> web.Response:
        self.metadata_requests += 1
        doc: dict[str, Any] = {
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "authorization_endpoint": self.issuer + "authorize",
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic", "client_secret_post", "client_secret_jwt",
                "private_key_jwt", "tls_client_auth", "none",
            ],
            "grant_types_supported": ["client_credentials", "refresh_token", JWT_BEARER],
            "authorization_response_iss_parameter_supported": True,
        }  # fmt: skip
        doc.update(self.metadata_overrides)
        return json_response({k: v for k, v in doc.items() if v is not None})

    # -- the token endpoint ---------------------------------------------------------------

    async def _token(
        self, request: web.Request, body: bytes, record: TokenRequest
    ) -> web.StreamResponse:
        if request.method != "POST":
            return _error(405, "invalid_request", "POST required")
        if request.content_type != "application/x-www-form-urlencoded":
            return _error(400, "invalid_request", "form encoding required (RFC 6749 3.2)")
        pairs = parse_qsl(body.decode("ascii", "replace"), keep_blank_values=True)
        form: dict[str, list[str]] = {}
        for key, value in pairs:
            form.setdefault(key, []).append(value)
        for key, values in form.items():
            if len(values) > 1 and key != "resource":  # RFC 6749 3.2: no repeats
                return _error(400, "invalid_request", f"{key} repeated")
        one = {k: v[0] for k, v in form.items()}
        grant = one.get("grant_type")
        record.grant = grant
        client, failure = self._authenticate(request, one, grant)
        if failure is not None:
            return failure
        jkt: str | None = None
        if "dpop" in {k.lower() for k in request.headers}:
            claims_or_problem = self._proof(request, self.token_endpoint, None, self.token_nonce)
            if isinstance(claims_or_problem, str):
                if claims_or_problem == "use_dpop_nonce":
                    return json_response(
                        {"error": "use_dpop_nonce", "error_description": "nonce required"},
                        400, {"DPoP-Nonce": self.token_nonce or ""},
                    )  # fmt: skip
                return _error(400, "invalid_dpop_proof", claims_or_problem)
            jkt = claims_or_problem["jkt"]
        resources = form.get("resource", [])
        for res in resources:
            if "#" in res or "://" not in res or res not in self.resources:
                return _error(400, "invalid_target", f"resource not accepted: {res}")
        if grant == "client_credentials":
            if client is None:
                return _error(401, "invalid_client", "client authentication required")
            claims: dict[str, Any] = {"sub": client.client_id, "client_id": client.client_id}
        elif grant == JWT_BEARER:
            claims_or_error = self._grant_assertion(one.get("assertion"))
            if isinstance(claims_or_error, web.Response):
                return claims_or_error
            claims = claims_or_error
        else:
            return _error(400, "unsupported_grant_type", f"unsupported grant: {grant}")
        if resources:
            claims["aud"] = resources if len(resources) > 1 else resources[0]
        if one.get("scope"):
            claims["scope"] = one["scope"]
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}
        tok = self.issue_access_token(
            expires_at=self.now() + self.token_ttl, grant=grant or "", claims=claims
        )
        self.logins += 1
        kind = "DPoP" if jkt else "Bearer"
        return json_response(
            {"access_token": tok.token, "token_type": kind, "expires_in": self.token_ttl}
        )

    # -- DPoP ----------------------------------------------------------------------------

    def _proof(
        self, request: web.Request, url: str, token: str | None, nonce: str | None
    ) -> dict[str, Any] | str:
        """The checked proof's claims (plus ``jkt``), or why it is refused."""
        values = request.headers.getall("DPoP", [])
        if len(values) != 1:
            return "exactly one DPoP header required"
        proof = values[0]
        try:
            header = jwt.get_unverified_header(proof)
        except jwt.PyJWTError:
            return "malformed proof"
        jwk = header.get("jwk")
        if header.get("typ") != "dpop+jwt" or header.get("alg") not in ("ES256", "RS256"):
            return "typ must be dpop+jwt with an asymmetric alg"
        if not isinstance(jwk, dict) or any(k in jwk for k in ("d", "p", "q")):
            return "jwk must be a public key"
        try:
            key = jwt.PyJWK(jwk).key
            claims = jwt.decode(
                proof, key, algorithms=[header["alg"]],
                options={"require": ["jti", "htm", "htu", "iat"], "verify_aud": False},
            )  # fmt: skip
        except (jwt.PyJWTError, ValueError) as exc:
            return f"bad proof: {type(exc).__name__}"
        self.dpop_proofs.append(claims)
        if claims["htm"] != request.method or claims["htu"] != url:
            return f"htm/htu mismatch: {claims['htm']} {claims['htu']}"
        if abs(claims["iat"] - time.time()) > 60:
            return "iat out of range"
        if claims["jti"] in self.seen_jti:
            return "jti replayed"
        self.seen_jti.add(claims["jti"])
        if token is not None:
            ath = base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest())
            if claims.get("ath") != ath.rstrip(b"=").decode():
                return "ath mismatch"
        if nonce is not None and claims.get("nonce") != nonce:
            return "use_dpop_nonce"
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y") if k in jwk}
        canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
        jkt = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=")
        return {**claims, "jkt": jkt.decode()}

    async def api_precheck(self, request: web.Request) -> web.StreamResponse | None:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("dpop "):
            token = header.partition(" ")[2]
            record = self.access_tokens.get(token)
            if record is not None and "cnf" in record.claims:
                return self._dpop_unauthorized("invalid_token", "a DPoP-bound token as bearer")
            return None
        token = header[5:].strip()
        record = self.access_tokens.get(token)
        if record is None or not record.valid_at(self.now()) or "cnf" not in record.claims:
            return self._dpop_unauthorized("invalid_token", "unknown or unbound token")
        url = f"{self.base_url}{request.rel_url.path}"
        result = self._proof(request, url, token, self.api_nonce)
        if result == "use_dpop_nonce":
            return self._dpop_unauthorized("use_dpop_nonce", "nonce required")
        if isinstance(result, str):
            self.dpop_problems.append(result)
            return self._dpop_unauthorized("invalid_dpop_proof", result)
        if result["jkt"] != record.claims["cnf"]["jkt"]:
            return self._dpop_unauthorized("invalid_token", "key mismatch")
        body = await request.read()
        return json_response(
            {"ok": True, "path": request.path, "length": len(body), "jti": record.jti}
        )

    def _dpop_unauthorized(self, error: str, description: str) -> web.Response:
        challenge = f'DPoP error="{error}", error_description="{description}", algs="ES256"'
        headers = {"WWW-Authenticate": challenge}
        if error == "use_dpop_nonce" and self.api_nonce:
            headers["DPoP-Nonce"] = self.api_nonce
        return json_response({"error": error, "error_description": description}, 401, headers)

    def rotate_nonces(self) -> None:
        self.token_nonce = "tn-" + secrets.token_urlsafe(8)
        self.api_nonce = "an-" + secrets.token_urlsafe(8)

    def _authenticate(
        self, request: web.Request, form: dict[str, str], grant: str | None
    ) -> tuple[Client | None, web.Response | None]:
        used: list[str] = []
        header = request.headers.get("Authorization", "")
        basic = header[:6].lower() == "basic "
        if basic:
            used.append("client_secret_basic")
        if "client_secret" in form:
            used.append("client_secret_post")
        if "client_assertion" in form or "client_assertion_type" in form:
            used.append("jwt")
        if len(used) > 1:
            return None, _error(400, "invalid_request", "more than one authentication method")
        client_id = form.get("client_id")
        if basic:
            try:
                raw = base64.b64decode(header[6:].strip(), validate=True).decode()
                cid, _, secret = raw.partition(":")
                client_id, secret = unquote_plus(cid), unquote_plus(secret)
            except ValueError:
                return None, _error(401, "invalid_client", "malformed Basic credentials")
            if form.get("client_id") not in (None, client_id):
                return None, _error(401, "invalid_client", "client_id mismatch")
        if client_id is None:
            if grant == JWT_BEARER:
                return None, None  # RFC 7523 3.1: client authentication is optional
            return None, _error(401, "invalid_client", "no client authentication")
        client = self.clients.get(client_id)
        if client is None:
            return None, _error(401, "invalid_client", "unknown client")
        method = client.method
        if method == "client_secret_basic" and not (basic and secret == client.secret):
            return None, _error(401, "invalid_client", "client_secret_basic required")
        if method == "client_secret_post" and form.get("client_secret") != client.secret:
            return None, _error(401, "invalid_client", "client_secret_post required")
        if method in ("none", "tls_client_auth") and used:
            return None, _error(401, "invalid_client", f"{method}: no secret or assertion")
        if method in ("client_secret_jwt", "private_key_jwt"):
            problem = self._client_assertion(client, form)
            if problem:
                return None, _error(401, "invalid_client", problem)
        if method == "tls_client_auth":
            cert = request.transport.get_extra_info("peercert") if request.transport else None
            cn = _common_name(cert)
            if cn is None or cn != client.tls_subject:
                return None, _error(401, "invalid_client", "no matching client certificate")
        self.authenticated.append((client.client_id, method))
        return client, None

    def _client_assertion(self, client: Client, form: dict[str, str]) -> str | None:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            return "client_assertion_type must be " + ASSERTION_TYPE
        assertion = form.get("client_assertion", "")
        secret = client.method == "client_secret_jwt"
        key = client.secret if secret else client.public_key
        algs = ["HS256"] if secret else ["RS256", "ES256", "EdDSA"]
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion, key, algorithms=algs, audience=[self.token_endpoint, self.issuer],
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            return f"client assertion refused: {type(exc).__name__}"
        if client.key_id and header.get("kid") != client.key_id:
            return "unknown kid"
        if claims["iss"] != client.client_id or claims["sub"] != client.client_id:
            return "iss and sub must be the client id"
        return self._fresh(claims)

    def _fresh(self, claims: dict[str, Any]) -> str | None:
        now = time.time()  # pyjwt checks exp on the real clock: keep to it here too
        if claims["exp"] > now + 600:
            return "exp too far ahead"
        if claims["jti"] in self.seen_jti:
            return "jti replayed"
        self.seen_jti.add(claims["jti"])
        return None

    def _grant_assertion(self, assertion: str | None) -> dict[str, Any] | web.Response:
        if not assertion:
            return _error(400, "invalid_request", "assertion required")
        try:
            iss = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return _error(400, "invalid_grant", "malformed assertion")
        trusted = self.issuers.get(str(iss))
        if trusted is None:
            return _error(400, "invalid_grant", "unknown issuer")
        try:
            claims = jwt.decode(
                assertion, trusted.public_key, algorithms=["RS256", "ES256", "EdDSA"],
                audience=[self.issuer, self.token_endpoint],
                options={"require": ["iss", "sub", "aud", "exp"]},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            return _error(400, "invalid_grant", f"assertion refused: {type(exc).__name__}")
        if trusted.subjects and claims["sub"] not in trusted.subjects:
            return _error(400, "invalid_grant", "subject not allowed")
        if "jti" in claims:
            problem = self._fresh(claims)
            if problem:
                return _error(400, "invalid_grant", problem)
        self.last_grant_claims = claims
        return {"sub": claims["sub"], "client_id": str(iss)}

    def check_token(self, token: AccessToken, request: web.Request) -> web.StreamResponse | None:
        return None


def _common_name(cert: Any) -> str | None:
    """The subject's CN, else its first DNS SAN (RFC 8705 2.1.2's tls_client_auth_san_dns)."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS":
            return str(value)
    return None
