"""The OAuth standards' auth keys (issue 13), parsed apart from config.py.

config.py calls :func:`oauth_keys` for ``oauth2_client_credentials``,
``oauth2_refresh_token`` and ``oauth2_jwt_bearer``; each key here is one
standard:

- ``client_auth`` (RFC 8414 names; ``basic``/``body`` aliases), with
  ``private_key`` (PEM, from ``${file:}``) and ``key_id`` for ``private_key_jwt``;
- ``resource`` (RFC 8707): an absolute URI without fragment, or a list of them;
- ``issuer`` / ``discovery_url`` (RFC 8414, OpenID Connect Discovery): where
  ``token_url`` (and ``authorize_url``) come from when not given;
- ``authorize_params`` (refresh token only): extra authorization-request
  parameters, e.g. ``{prompt: consent, access_type: offline}``;
- ``claims`` (jwt bearer only): the assertion's claims (RFC 7523 2.1);
- ``dpop: true`` (RFC 9449): sender-constrained tokens, see proxy/tokens/dpop.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from yarl import URL

from proxy.jose import METHODS, load_private_key

if TYPE_CHECKING:
    from proxy.config.model import _Parser

#: keys every OAuth2 type accepts, besides its own
COMMON = {
    "client_auth", "private_key", "key_id", "resource", "issuer", "discovery_url", "dpop",
}  # fmt: skip
#: authorization-request parameters authproxy sets itself
_RESERVED_PARAMS = {
    "response_type", "client_id", "redirect_uri", "state", "code_challenge",
    "code_challenge_method",
}  # fmt: skip
#: RFC 7523 2.1 claims authproxy fills in when not given
_JWT_RESERVED = {"jti", "iat", "exp"}


def _resource(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError("must be an absolute URI or a list of them")
    for item in items:
        u = URL(item)
        if not u.is_absolute() or u.fragment or "#" in item:
            raise ValueError(f"{item!r} must be an absolute URI without a fragment (RFC 8707)")
    return tuple(str(v) for v in items)


def _https_or_loopback(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("must be a URL")
    u = URL(v)
    if u.scheme not in ("http", "https") or not u.host:
        raise ValueError("must be an http(s) URL")
    return v


def oauth_keys(p: _Parser, d: dict[str, Any], path: str, kind: str) -> dict[str, Any]:
    """The standards' keys of one OAuth2 auth mapping, as dataclass fields."""
    out: dict[str, Any] = {}
    method = p.choice(d, "client_auth", path, METHODS, "body")
    out["client_auth"] = method
    pem = p.string(d, "private_key", path, None)
    if pem:
        try:
            load_private_key(pem)
        except ValueError as exc:
            p.error(f"{path}.private_key", str(exc))
    out["private_key"] = pem or None
    out["key_id"] = p.string(d, "key_id", path, None)
    needs_key = method == "private_key_jwt" or kind == "oauth2_jwt_bearer"
    if needs_key and not pem:
        why = "client_auth: private_key_jwt" if method == "private_key_jwt" else kind
        p.error(f"{path}.private_key", f"is required by {why} (e.g. ${{file:/path/key.pem}})")
    out["resource"] = p.value(d, "resource", path, _resource, ())
    out["issuer"] = p.value(d, "issuer", path, _https_or_loopback, None)
    out["discovery_url"] = p.value(d, "discovery_url", path, _https_or_loopback, None)
    out["dpop"] = p.boolean(d, "dpop", path, False)
    if out["issuer"] and out["discovery_url"]:
        p.error(f"{path}.discovery_url", "give issuer or discovery_url, not both")
    if kind == "oauth2_refresh_token":
        params = d.get("authorize_params") or {}
        if not isinstance(params, dict):
            p.error(f"{path}.authorize_params", "must be a mapping")
            params = {}
        for key in params:
            if key in _RESERVED_PARAMS:
                p.error(f"{path}.authorize_params.{key}", "is set by authproxy itself")
        resolved = p.resolve(params, f"{path}.authorize_params")
        out["authorize_params"] = {str(k): _param(v) for k, v in resolved.items()}
    if kind == "oauth2_jwt_bearer":
        claims = d.get("claims")
        if not isinstance(claims, dict) or not claims:
            p.error(f"{path}.claims", "is required: a mapping with at least iss and aud")
            claims = {}
        for key in ("iss", "aud"):
            if claims and key not in claims:
                p.error(f"{path}.claims.{key}", "is required (RFC 7523 section 3)")
        for key in claims:
            if key in _JWT_RESERVED:
                p.error(f"{path}.claims.{key}", "is set by authproxy for every assertion")
        out["claims"] = p.resolve(claims, f"{path}.claims")
        out["assertion_ttl"] = p.duration(d, "assertion_ttl", path, 300.0)
    return out


def _param(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    return str(v)
