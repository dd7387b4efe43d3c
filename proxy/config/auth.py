"""A route's ``auth``: a registry of auth types, each a model dataclass and its parser.

The keys of a type are its dataclass's fields (:mod:`proxy.config.model`); what
is particular to a type is here:

- ``preset``: a provider's parameters, expanded (:mod:`proxy.config.presets`) into a
  generic mapping parsed like one a user wrote;
- the OAuth standards (issue 13), common to the three OAuth2 types: ``client_auth``
  (RFC 8414 names; ``basic``/``body`` aliases), with ``private_key`` (PEM) and
  ``key_id`` for ``private_key_jwt``; ``resource`` (RFC 8707); ``issuer`` /
  ``discovery_url`` (RFC 8414, OpenID Connect Discovery), where ``token_url`` (and
  ``authorize_url``) come from when not given; ``dpop: true`` (RFC 9449);
- ``authorize_params`` (refresh token only): extra authorization-request parameters;
- ``claims`` (jwt bearer only): the assertion's claims (RFC 7523 2.1);
- ``login``: a request template, the paths into its answer, and a refresh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import proxy.config.fields as fields
from proxy.config.model import (
    AuthConfig,
    ClientCredentialsAuth,
    JwtBearerAuth,
    LoginAuth,
    NoAuth,
    RefreshTokenAuth,
    RequestSpec,
    ResponseSpec,
    StaticAuth,
)
from proxy.config.presets import PRESETS, expand
from proxy.config.reader import Data, Reader, build
from proxy.config.values import param
from proxy.jose import load_private_key

#: authorization-request parameters authproxy sets itself
_RESERVED_PARAMS = {
    "response_type", "client_id", "redirect_uri", "state", "code_challenge",
    "code_challenge_method",
}  # fmt: skip
#: RFC 7523 2.1 claims authproxy fills in when not given
_JWT_RESERVED = {"jti", "iat", "exp"}
#: read first: the defaults of other keys depend on them
_FIRST = ("client_auth", "issuer", "discovery_url")
#: client authentication methods that need no client secret
_NO_SECRET = ("none", "private_key_jwt", "tls_client_auth")


@dataclass(frozen=True)
class AuthType:
    cls: type
    parse: Callable[[Reader, Data, str], AuthConfig | None]

    @property
    def keys(self) -> set[str]:
        return {"type"} | fields.key_names(self.cls)


def type_name(cls: type) -> str:
    found = {f.name: f.default for f in dataclasses.fields(cls)}["type"]
    assert isinstance(found, str)
    return found


def _none(r: Reader, d: Data, path: str) -> NoAuth:
    return NoAuth()


def _static(r: Reader, d: Data, path: str) -> StaticAuth:
    return build(StaticAuth, r.read(StaticAuth, d, path))


def _oauth(r: Reader, cls: type, d: Data, path: str, client_auth: str | None = None) -> Data:
    """The keys of an OAuth2 type, its standards checked; the type's own mappings left out."""
    first = r.read(
        cls, d, path, only=_FIRST, defaults={"client_auth": client_auth} if client_auth else None
    )
    defaults: Data = {"private_key": None}
    if first["issuer"] or first["discovery_url"]:
        defaults["token_url"] = ""  # discovery brings the token endpoint
    if first["client_auth"] in _NO_SECRET:
        defaults["client_secret"] = ""
    own = {"claims", "authorize_params", *_FIRST}
    values = {**first, **r.read(cls, d, path, only=fields.key_names(cls) - own, defaults=defaults)}
    pem = values["private_key"]
    if isinstance(pem, str) and pem:
        try:
            load_private_key(pem)
        except ValueError as exc:
            r.error(f"{path}.private_key", str(exc))
    kind = type_name(cls)
    method = first["client_auth"]
    if (method == "private_key_jwt" or kind == "oauth2_jwt_bearer") and not pem:
        why = "client_auth: private_key_jwt" if method == "private_key_jwt" else kind
        r.error(f"{path}.private_key", f"is required by {why} (e.g. ${{file:/path/key.pem}})")
    values["private_key"] = pem or None
    if first["issuer"] and first["discovery_url"]:
        r.error(f"{path}.discovery_url", "give issuer or discovery_url, not both")
    for key in ("token_url", "client_id", "client_secret"):
        values[key] = values[key] or ""
    return values


def _client_credentials(r: Reader, d: Data, path: str) -> ClientCredentialsAuth:
    return build(ClientCredentialsAuth, _oauth(r, ClientCredentialsAuth, d, path))


def _refresh_token(r: Reader, d: Data, path: str) -> RefreshTokenAuth:
    values = _oauth(r, RefreshTokenAuth, d, path)
    values["refresh_token"] = values["refresh_token"] or None
    params = d.get("authorize_params") or {}
    if not isinstance(params, dict):
        r.error(f"{path}.authorize_params", "must be a mapping")
        params = {}
    for key in params:
        if key in _RESERVED_PARAMS:
            r.error(f"{path}.authorize_params.{key}", "is set by authproxy itself")
    resolved = r.resolve(params, f"{path}.authorize_params")
    assert isinstance(resolved, dict)
    values["authorize_params"] = {str(k): param(v) for k, v in resolved.items()}
    return build(RefreshTokenAuth, values)


def _jwt_bearer(r: Reader, d: Data, path: str) -> JwtBearerAuth:
    client_auth = "body" if "client_secret" in d else "none"
    values = _oauth(r, JwtBearerAuth, d, path, client_auth)
    claims = d.get("claims")
    if not isinstance(claims, dict) or not claims:
        r.error(f"{path}.claims", "is required: a mapping with at least iss and aud")
        claims = {}
    for key in ("iss", "aud"):
        if claims and key not in claims:
            r.error(f"{path}.claims.{key}", "is required (RFC 7523 section 3)")
    for key in claims:
        if key in _JWT_RESERVED:
            r.error(f"{path}.claims.{key}", "is set by authproxy for every assertion")
    values["claims"] = r.resolve(claims, f"{path}.claims")
    return build(JwtBearerAuth, values)


def _request(r: Reader, data: object, path: str) -> RequestSpec | None:
    d = r.section(data, path, fields.key_names(RequestSpec))
    if not d:
        r.error(path, "must be a mapping with at least url")
        return None
    values = r.read(RequestSpec, d, path)
    values["method"] = str(values["method"] or "POST").upper()
    headers = values["headers"]
    assert isinstance(headers, dict)
    values["headers"] = {str(k): _text(v) for k, v in headers.items()}
    values["json"] = body = r.resolve(d.get("json"), f"{path}.json")
    form = r.resolve(d.get("form"), f"{path}.form")
    if form is not None and not isinstance(form, dict):
        r.error(f"{path}.form", "must be a mapping of field names to values")
        form = None
    if body is not None and form is not None:
        r.error(path, "give json or form, not both")
    values["form"] = {str(k): _text(v) for k, v in form.items()} if form else None
    return None if values["url"] is None else build(RequestSpec, values)


def _text(v: object) -> str:
    """A header or form value; a secret stays a :class:`Secret`."""
    if v is None:
        return ""
    return v if isinstance(v, str) else str(v)


def _response(r: Reader, data: object, path: str) -> ResponseSpec:
    d = r.section(data, path, fields.key_names(ResponseSpec))
    spec = build(ResponseSpec, r.read(ResponseSpec, d, path, defaults=dict.fromkeys(d)))
    if not spec.access_token:
        r.error(f"{path}.access_token", "is required")
    if spec.expires_at and spec.expires_in:
        r.error(path, "give expires_at or expires_in, not both")
    return spec


def _login(r: Reader, d: Data, path: str) -> LoginAuth | None:
    request = _request(r, d.get("request"), f"{path}.request")
    response = _response(r, d.get("response") or {}, f"{path}.response")
    refresh = refresh_response = None
    rd = d.get("refresh")
    if rd is not None:
        if isinstance(rd, dict) and "response" in rd:
            refresh_response = _response(r, rd["response"], f"{path}.refresh.response")
            rd = {k: v for k, v in rd.items() if k != "response"}
        refresh = _request(r, rd, f"{path}.refresh")
    values = r.read(LoginAuth, d, path)
    if request is None:
        return None
    values.update(
        request=request, response=response, refresh=refresh, refresh_response=refresh_response
    )
    return build(LoginAuth, values)


#: the auth types, in the order the error message lists them
AUTH_TYPES: dict[str, AuthType] = {
    type_name(t.cls): t
    for t in (
        AuthType(NoAuth, _none),
        AuthType(StaticAuth, _static),
        AuthType(ClientCredentialsAuth, _client_credentials),
        AuthType(RefreshTokenAuth, _refresh_token),
        AuthType(JwtBearerAuth, _jwt_bearer),
        AuthType(LoginAuth, _login),
    )
}


def parse_auth(
    r: Reader, data: object, path: str
) -> tuple[AuthConfig | None, str | None, str | None]:
    """Returns (auth, preset name, the preset's default upstream)."""
    if not isinstance(data, dict):
        r.error(path, "must be a mapping with a type (or a preset)")
        return None, None, None
    if "preset" in data:
        return _preset(r, data, path)
    kind = data.get("type")
    found = AUTH_TYPES.get(kind) if isinstance(kind, str) else None
    if found is not None:
        return found.parse(r, r.section(data, path, found.keys), path), None, None
    known = ", ".join(AUTH_TYPES)
    if kind is None:
        r.error(f"{path}.type", f"is required (one of {known}), or give a preset")
    else:
        r.error(f"{path}.type", f"unknown auth type {kind!r}; one of {known}")
    return None, None, None


def _preset(r: Reader, data: Data, path: str) -> tuple[AuthConfig | None, str | None, str | None]:
    name = data["preset"]
    if not isinstance(name, str) or name not in PRESETS:
        r.error(f"{path}.preset", f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return None, str(name), None
    params = {k: v for k, v in data.items() if k != "preset"}
    r.section(params, path, set(PRESETS[name].params))
    resolved = r.resolve(params, path)
    assert isinstance(resolved, dict)
    try:
        expanded, upstream = expand(name, resolved)
    except KeyError as exc:
        r.error(f"{path}.{exc.args[0]}", f"is required by preset {name}")
        return None, name, None
    auth, _, _ = parse_auth(r, expanded, path)
    return auth, name, upstream


def uses_token(auth: AuthConfig) -> bool:
    return not isinstance(auth, NoAuth | StaticAuth)
