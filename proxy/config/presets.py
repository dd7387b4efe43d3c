"""The providers of the seed documents, as data.

A preset needs only credentials (and ``sandbox: true`` where the provider has
one). It expands to a generic auth mapping, parsed like one a user wrote, plus
the provider's API base URL as the route's default upstream. ``base_url`` and
``token_url`` override the hosts so that tests and staging can point a preset
elsewhere. ``authproxy check --explain`` prints the expansion.

Like golang/oauth2's ``endpoints`` package, nothing here is code that fetches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    description: str
    params: tuple[str, ...]
    build: Callable[[dict[str, Any]], tuple[dict[str, Any], str]]


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")


def _invoice_ng(p: dict[str, Any]) -> tuple[dict[str, Any], str]:
    # Seed 000: POST {base}/authenticate {"api_key"} -> token, expiry (epoch);
    # GET {base}/token/refresh with the current bearer -> refresh_token, expiry,
    # and the previous token is invalidated.
    base = p.get("base_url") or "https://api.invoice.ng/v1/"
    auth = {
        "type": "login",
        "request": {
            "method": "POST",
            "url": p.get("token_url") or _join(base, "authenticate"),
            "json": {"api_key": p["api_key"]},
        },
        "response": {"access_token": "token", "expires_at": "expiry"},
        "refresh": {
            "method": "GET",
            "url": _join(base, "token/refresh"),
            "headers": {"Authorization": "Bearer {access_token}"},
            "response": {"access_token": "refresh_token", "expires_at": "expiry"},
        },
    }
    return auth, base


def _invoiced(p: dict[str, Any]) -> tuple[dict[str, Any], str]:
    # Seed 001: OAuth2 authorization code at invoiced.com, API at api.invoiced.com;
    # the sandbox swaps invoiced.com for sandbox.invoiced.com everywhere.
    host = "sandbox.invoiced.com" if p.get("sandbox") else "invoiced.com"
    base = p.get("base_url") or f"https://api.{host}/"
    auth: dict[str, Any] = {
        "type": "oauth2_refresh_token",
        "token_url": p.get("token_url") or f"https://{host}/oauth/access_token",
        "authorize_url": p.get("authorize_url") or f"https://{host}/oauth/authorize",
        "client_id": p["client_id"],
        "client_secret": p["client_secret"],
        "scope": p.get("scope") or "read_write",
    }
    for key in ("refresh_token", "redirect_uri", "pkce", "authorize_params", "resource", "issuer"):
        if p.get(key) is not None:
            auth[key] = p[key]
    return auth, base


def _taxizer(p: dict[str, Any]) -> tuple[dict[str, Any], str]:
    # Seed 002: POST {base}/Auth/Connect {clientId, clientSecret} -> jwtToken with an
    # ISO 8601 UTC expiry. The document names no refresh endpoint, so authproxy logs
    # in again. The document names one host, apistaging.taxizer.com, so that is the
    # default; no other host is guessed: give base_url for any other environment.
    base = p.get("base_url") or "https://apistaging.taxizer.com/v1/"
    auth = {
        "type": "login",
        "request": {
            "method": "POST",
            "url": p.get("token_url") or _join(base, "Auth/Connect"),
            "json": {"clientId": p["client_id"], "clientSecret": p["client_secret"]},
        },
        "response": {
            "access_token": "jwtToken",
            "expires_at": "jwtTokenExpireAtUTC",
            "refresh_token": "refreshToken",
            "refresh_expires_at": "refreshTokenExpireAtUTC",
        },
    }
    return auth, base


def _b2b_jwt(p: dict[str, Any]) -> tuple[dict[str, Any], str]:
    # Seed 003: {{host}} is the customer's own; login and a rotating refresh, both in
    # a {success, data} envelope.
    base = p["base_url"]
    envelope = {
        "access_token": "data.access_token",
        "expires_at": "data.access_expires_at",
        "refresh_token": "data.refresh_token",
        "refresh_expires_at": "data.refresh_expires_at",
    }
    auth = {
        "type": "login",
        "request": {
            "method": "POST",
            "url": p.get("token_url") or _join(base, "auth/login"),
            "json": {"username": p["username"], "password": p["password"]},
        },
        "response": envelope,
        "refresh": {
            "method": "POST",
            "url": _join(base, "auth/refresh"),
            "json": {"refresh_token": "{refresh_token}"},
        },
    }
    return auth, base


def _getpaid(p: dict[str, Any]) -> tuple[dict[str, Any], str]:
    # Seed 004: client credentials with a JSON body, an audience and scopes.
    api = "https://api.sandbox.getpaid.io" if p.get("sandbox") else "https://api.getpaid.io"
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": p.get("token_url") or "https://auth.getpaid.io/oauth/token",
        "client_id": p["client_id"],
        "client_secret": p["client_secret"],
        "audience": p.get("audience") or api,
        "scope": p.get("scope") or "accounts:read_write invoices:read_write",
        "body": "json",
    }
    return auth, p.get("base_url") or api + "/"


_COMMON = ("base_url", "token_url")

PRESETS: dict[str, Preset] = {
    "invoice_ng": Preset("Invoice.ng API key -> JWT", ("api_key", *_COMMON), _invoice_ng),
    "invoiced": Preset(
        "Invoiced OAuth2 authorization code + refresh token",
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
    "taxizer": Preset(
        "Taxizer clientId/clientSecret -> JWT",
        ("client_id", "client_secret", *_COMMON),
        _taxizer,
    ),
    "b2b_jwt": Preset(
        "B2B JWT API username/password, rotating refresh",
        ("username", "password", *_COMMON),
        _b2b_jwt,
    ),
    "getpaid": Preset(
        "getpaid OAuth2 client credentials (JSON body, audience)",
        ("client_id", "client_secret", "scope", "audience", "sandbox", *_COMMON),
        _getpaid,
    ),
}


def expand(name: str, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The generic auth mapping and default upstream for preset ``name``.

    Raises ``KeyError(param)`` for a missing required parameter.
    """
    return PRESETS[name].build(params)
