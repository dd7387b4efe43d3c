"""The providers of the seed documents, as data.

A preset needs only credentials (and ``sandbox: true`` where the provider has
one). It expands to a generic auth mapping, parsed like one a user wrote, plus
the provider's API base URL as the route's default upstream. ``base_url`` and
``token_url`` override the hosts so that tests and staging can point a preset
elsewhere. ``authproxy check --explain`` prints the expansion.

Like golang/oauth2's ``endpoints`` package, nothing here is code that fetches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

#: a preset's parameters (secrets resolved), or the generic auth mapping it expands to
Params = dict[str, object]


@dataclass(frozen=True)
class Preset:
    params: tuple[str, ...]
    build: Callable[[Params], tuple[Params, str]]


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def _text(p: Params, key: str, default: str) -> str:
    value = p.get(key)
    return value if isinstance(value, str) and value else default


def _login(
    p: Params, base: str, path: str, body: Mapping[str, object], response: Mapping[str, str]
) -> Params:
    """A login that POSTs ``body`` as JSON to ``{base}/{path}`` (or ``token_url``)."""
    url = _text(p, "token_url", _join(base, path))
    request = {"method": "POST", "url": url, "json": body}
    return {"type": "login", "request": request, "response": response}


def _invoice_ng(p: Params) -> tuple[Params, str]:
    # Seed 000: POST {base}/authenticate {"api_key"} -> token, expiry (epoch);
    # GET {base}/token/refresh with the current bearer -> refresh_token, expiry,
    # and the previous token is invalidated.
    base = _text(p, "base_url", "https://api.invoice.ng/v1/")
    auth = _login(
        p, base, "authenticate", {"api_key": p["api_key"]},
        {"access_token": "token", "expires_at": "expiry"},
    )  # fmt: skip
    auth["refresh"] = {
        "method": "GET",
        "url": _join(base, "token/refresh"),
        "headers": {"Authorization": "Bearer {access_token}"},
        "response": {"access_token": "refresh_token", "expires_at": "expiry"},
    }
    return auth, base


def _invoiced(p: Params) -> tuple[Params, str]:
    # Seed 001: OAuth2 authorization code at invoiced.com, API at api.invoiced.com;
    # the sandbox swaps invoiced.com for sandbox.invoiced.com everywhere.
    host = "sandbox.invoiced.com" if p.get("sandbox") else "invoiced.com"
    base = _text(p, "base_url", f"https://api.{host}/")
    auth: Params = {
        "type": "oauth2_refresh_token",
        "token_url": _text(p, "token_url", f"https://{host}/oauth/access_token"),
        "authorize_url": _text(p, "authorize_url", f"https://{host}/oauth/authorize"),
        "client_id": p["client_id"],
        "client_secret": p["client_secret"],
        "scope": p.get("scope") or "read_write",
    }
    for key in ("refresh_token", "redirect_uri", "pkce", "authorize_params", "resource", "issuer"):
        if p.get(key) is not None:
            auth[key] = p[key]
    return auth, base


def _taxizer(p: Params) -> tuple[Params, str]:
    # Seed 002: POST {base}/Auth/Connect {clientId, clientSecret} -> jwtToken with an
    # ISO 8601 UTC expiry. The document names no refresh endpoint, so authproxy logs
    # in again. The document names one host, apistaging.taxizer.com, so that is the
    # default; no other host is guessed: give base_url for any other environment.
    base = _text(p, "base_url", "https://apistaging.taxizer.com/v1/")
    body = {"clientId": p["client_id"], "clientSecret": p["client_secret"]}
    response = {
        "access_token": "jwtToken",
        "expires_at": "jwtTokenExpireAtUTC",
        "refresh_token": "refreshToken",
        "refresh_expires_at": "refreshTokenExpireAtUTC",
    }
    return _login(p, base, "Auth/Connect", body, response), base


def _b2b_jwt(p: Params) -> tuple[Params, str]:
    # Seed 003: {{host}} is the customer's own; login and a rotating refresh, both in
    # a {success, data} envelope.
    base = p["base_url"]
    base = base if isinstance(base, str) else str(base)
    envelope = {
        "access_token": "data.access_token",
        "expires_at": "data.access_expires_at",
        "refresh_token": "data.refresh_token",
        "refresh_expires_at": "data.refresh_expires_at",
    }
    body = {"username": p["username"], "password": p["password"]}
    auth = _login(p, base, "auth/login", body, envelope)
    auth["refresh"] = {
        "method": "POST",
        "url": _join(base, "auth/refresh"),
        "json": {"refresh_token": "{refresh_token}"},
    }
    return auth, base


def _getpaid(p: Params) -> tuple[Params, str]:
    # Seed 004: client credentials with a JSON body, an audience and scopes.
    api = "https://api.sandbox.getpaid.io" if p.get("sandbox") else "https://api.getpaid.io"
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": _text(p, "token_url", "https://auth.getpaid.io/oauth/token"),
        "client_id": p["client_id"],
        "client_secret": p["client_secret"],
        "audience": p.get("audience") or api,
        "scope": p.get("scope") or "accounts:read_write invoices:read_write",
        "body": "json",
    }
    return auth, _text(p, "base_url", api + "/")


_COMMON = ("base_url", "token_url")

PRESETS: dict[str, Preset] = {
    # Invoice.ng: API key -> JWT
    "invoice_ng": Preset(("api_key", *_COMMON), _invoice_ng),
    # Invoiced: OAuth2 authorization code + refresh token
    "invoiced": Preset(
        (
            "client_id",
            "client_secret",
            "refresh_token",
            "redirect_uri",
            "scope",
            "pkce",
            "sandbox",
            "authorize_url",
            "authorize_params",
            "resource",
            "issuer",
            *_COMMON,
        ),
        _invoiced,
    ),  # fmt: skip
    # Taxizer: clientId/clientSecret -> JWT
    "taxizer": Preset(("client_id", "client_secret", *_COMMON), _taxizer),
    # B2B JWT API: username/password, rotating refresh
    "b2b_jwt": Preset(("username", "password", *_COMMON), _b2b_jwt),
    # getpaid: OAuth2 client credentials (JSON body, audience)
    "getpaid": Preset(
        ("client_id", "client_secret", "scope", "audience", "sandbox", *_COMMON), _getpaid
    ),
}


def expand(name: str, params: Params) -> tuple[Params, str]:
    """The generic auth mapping and default upstream for preset ``name``.

    Raises ``KeyError(param)`` for a missing required parameter.
    """
    return PRESETS[name].build(params)
