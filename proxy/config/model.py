"""The configuration as frozen, typed dataclasses.

Each field that is a config key carries its kind in its metadata
(:mod:`proxy.config.fields`): the parser (:mod:`proxy.config.schema`) and the
editor's JSON Schema (:mod:`proxy.config.json_schema`) are both driven by these
fields, so that a key and its default are written here and nowhere else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import proxy.config.fields as k
from proxy.config.values import Listen
from proxy.http1.egress import EgressConfig

#: a JSON-like value from the config (``extra``, ``claims``, a login's ``json`` body)
Value = object


@dataclass(frozen=True)
class TLSConfig:
    """TLS towards a route's upstream and its token endpoint."""

    verify: bool = field(default=True, metadata=k.BOOL)
    ca_file: str | None = field(default=None, metadata=k.STRING)
    client_cert: str | None = field(default=None, metadata=k.STRING)
    client_key: str | None = field(default=None, metadata=k.STRING)


@dataclass(frozen=True)
class InjectConfig:
    header: str = field(default="Authorization", metadata=k.HEADER_NAME)
    format: str = field(default="Bearer {access_token}", metadata=k.STRING)


@dataclass(frozen=True)
class NoAuth:
    type: Literal["none"] = "none"


@dataclass(frozen=True)
class StaticAuth:
    value: str = field(metadata=k.HEADER_VALUE)
    header: str = field(default="Authorization", kw_only=True, metadata=k.HEADER_NAME)
    type: Literal["static"] = "static"


@dataclass(frozen=True, kw_only=True)
class OAuthStandards:
    """The OAuth standards' keys every OAuth2 type takes (issue 13; proxy/config/auth.py)."""

    client_auth: str = field(default="body", metadata=k.CLIENT_AUTH)
    private_key: str | None = field(default=None, metadata=k.SECRET)
    key_id: str | None = field(default=None, metadata=k.STRING)
    resource: tuple[str, ...] = field(default=(), metadata=k.RESOURCE)
    issuer: str | None = field(default=None, metadata=k.URL)
    discovery_url: str | None = field(default=None, metadata=k.URL)
    dpop: bool = field(default=False, metadata=k.BOOL)
    scope: str | None = field(default=None, metadata=k.SCOPE)
    extra: Mapping[str, Value] = field(default_factory=dict, metadata=k.MAPPING)
    default_ttl: float = field(default=300.0, metadata=k.DURATION)


@dataclass(frozen=True, kw_only=True)
class SecretClientAuth(OAuthStandards):
    """An OAuth2 client that has a token endpoint, an id and (mostly) a secret."""

    token_url: str = field(metadata=k.URL)
    client_id: str = field(metadata=k.STRING)
    client_secret: str = field(metadata=k.SECRET)


@dataclass(frozen=True, kw_only=True)
class ClientCredentialsAuth(SecretClientAuth):
    audience: str | None = field(default=None, metadata=k.STRING)
    body: Literal["form", "json"] = field(default="form", metadata=k.choice("form", "json"))
    type: Literal["oauth2_client_credentials"] = "oauth2_client_credentials"


@dataclass(frozen=True, kw_only=True)
class RefreshTokenAuth(SecretClientAuth):
    refresh_token: str | None = field(default=None, metadata=k.SECRET)
    authorize_url: str | None = field(default=None, metadata=k.URL)
    redirect_uri: str | None = field(default=None, metadata=k.URL)
    pkce: bool = field(default=False, metadata=k.BOOL)
    authorize_params: Mapping[str, str] = field(default_factory=dict, metadata=k.MAPPING)
    type: Literal["oauth2_refresh_token"] = "oauth2_refresh_token"


@dataclass(frozen=True, kw_only=True)
class JwtBearerAuth(OAuthStandards):
    """RFC 7523 section 2.1: a signed assertion exchanged for an access token."""

    token_url: str = field(metadata=k.URL)
    private_key: str = field(metadata=k.SECRET)
    claims: Mapping[str, Value] = field(metadata=k.MAPPING)
    client_id: str = field(default="", metadata=k.STRING)
    client_secret: str = field(default="", metadata=k.SECRET)
    client_auth: str = field(default="none", metadata=k.CLIENT_AUTH)
    assertion_ttl: float = field(default=300.0, metadata=k.DURATION)
    type: Literal["oauth2_jwt_bearer"] = "oauth2_jwt_bearer"


@dataclass(frozen=True)
class RequestSpec:
    """An HTTP request template. Strings may hold ``{access_token}``/``{refresh_token}``."""

    url: str = field(metadata=k.URL)
    method: str = field(default="POST", metadata=k.STRING)
    headers: Mapping[str, str] = field(default_factory=dict, metadata=k.MAPPING)
    json: Value = field(default=None, metadata=k.ANY)
    form: Mapping[str, str] | None = field(default=None, metadata=k.special({"type": "object"}))


@dataclass(frozen=True)
class ResponseSpec:
    """Dotted paths into a JSON answer (``data.access_token``)."""

    access_token: str = field(default="access_token", metadata=k.STRING)
    expires_at: str | None = field(default=None, metadata=k.STRING)
    expires_in: str | None = field(default=None, metadata=k.STRING)
    refresh_token: str | None = field(default=None, metadata=k.STRING)
    refresh_expires_at: str | None = field(default=None, metadata=k.STRING)
    refresh_expires_in: str | None = field(default=None, metadata=k.STRING)


@dataclass(frozen=True)
class LoginAuth:
    request: RequestSpec = field(metadata=k.section(RequestSpec))
    response: ResponseSpec = field(metadata=k.section(ResponseSpec))
    #: written as ``refresh: {method, url, ..., response: {...}}``
    refresh: RequestSpec | None = field(default=None, metadata=k.special(k.ref("Refresh")))
    refresh_response: ResponseSpec | None = None
    default_ttl: float = field(default=300.0, metadata=k.DURATION)
    type: Literal["login"] = "login"


AuthConfig = (
    NoAuth | StaticAuth | ClientCredentialsAuth | RefreshTokenAuth | LoginAuth | JwtBearerAuth
)


@dataclass(frozen=True)
class Limits:
    max_body: int = field(default=100 * 1024**2, metadata=k.SIZE)
    max_header_size: int = field(default=16 * 1024, metadata=k.SIZE)
    max_concurrent: int = field(default=1000, metadata=k.POSITIVE)
    idle_timeout: float = field(default=75.0, metadata=k.DURATION)
    #: the listen queue of the proxy port
    backlog: int = field(default=1024, metadata=k.POSITIVE)
    #: request bodies buffered for a 401 replay, across all routes at once
    max_replay_total: int = field(default=64 * 1024**2, metadata=k.SIZE)


_INHERIT_DURATION = k.inherited(k.DURATION)


@dataclass(frozen=True)
class RouteConfig:
    name: str
    #: default ``/{name}/``
    prefix: str = field(metadata=k.STRING)
    upstream: str = field(metadata=k.URL)
    auth: AuthConfig = field(metadata=k.special(k.ref("Auth")))
    inject: InjectConfig = field(default=InjectConfig(), metadata=k.section(InjectConfig))
    pass_client_authorization: bool = field(default=False, metadata=k.BOOL)
    tls: TLSConfig = field(default=TLSConfig(), metadata=k.section(TLSConfig))
    refresh_before: float = field(default=60.0, metadata=_INHERIT_DURATION)
    connect_timeout: float = field(default=5.0, metadata=_INHERIT_DURATION)
    timeout: float = field(default=60.0, metadata=_INHERIT_DURATION)
    #: inactivity while a body streams, either direction; re-armed per chunk
    read_timeout: float = field(default=60.0, metadata=_INHERIT_DURATION)
    #: a request body that stops arriving (408 request_timeout)
    body_timeout: float = field(default=30.0, metadata=_INHERIT_DURATION)
    token_timeout: float = field(default=10.0, metadata=_INHERIT_DURATION)
    retry_on_401: bool = field(default=True, metadata=k.inherited(k.BOOL))
    max_replay_body: int = field(default=1024**2, metadata=k.inherited(k.SIZE))
    #: default: ``limits.max_body``
    max_body: int = field(default=Limits.max_body, metadata=k.SIZE)
    #: default: ``limits.max_concurrent``
    max_concurrent: int = field(default=Limits.max_concurrent, metadata=k.POSITIVE)
    preset: str | None = None
    #: the egress (corporate HTTP) proxy for the upstream and token endpoint; None: direct
    egress_proxy: EgressConfig | None = field(default=None, metadata=k.inherited(k.EGRESS))
    #: token layer (proxy/tokens/cooldown.py, backoff.py)
    refused_cooldown: float = field(default=5.0, metadata=_INHERIT_DURATION)
    backoff_cap: float = field(default=10.0, metadata=_INHERIT_DURATION)


@dataclass(frozen=True)
class SentinelConfig:
    """Redis Sentinel: the master is found by name, and found again after a failover."""

    master_name: str = field(metadata=k.STRING)
    sentinels: tuple[tuple[str, int], ...] = field(
        metadata=k.special({"type": "array", "items": {"type": "string"}, "minItems": 1})
    )
    password: str | None = field(default=None, metadata=k.SECRET)
    username: str | None = field(default=None, metadata=k.STRING)


@dataclass(frozen=True)
class TokenStoreConfig:
    type: Literal["memory", "file", "redis"] = field(
        default="memory", metadata=k.choice("memory", "file", "redis")
    )
    path: str | None = field(default=None, metadata=k.STRING)
    url: str | None = field(default=None, metadata=k.special({"type": "string"}))
    encryption_key: str | None = field(default=None, metadata=k.FERNET_KEY)
    key_prefix: str = field(default="authproxy", metadata=k.STRING)
    #: the refresh lock's lease; unset: sized from the routes' token_timeout
    lock_lease: float = field(default=15.0, metadata=k.DURATION)
    username: str | None = field(default=None, metadata=k.STRING)
    password: str | None = field(default=None, metadata=k.SECRET)
    tls: TLSConfig | None = field(default=None, metadata=k.section(TLSConfig))
    sentinel: SentinelConfig | None = field(default=None, metadata=k.section(SentinelConfig))
    cluster: bool = field(default=False, metadata=k.BOOL)
    #: from the url's query: socket timeouts (never above CALL_BOUND), db, protocol
    options: tuple[tuple[str, str], ...] = ()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Config:
    routes: tuple[RouteConfig, ...] = field(
        metadata=k.special({"type": "object", "additionalProperties": k.ref("RouteConfig")})
    )
    listen: Listen = field(default=Listen("127.0.0.1", 8080), metadata=k.LISTEN)
    admin_listen: Listen | None = field(
        default=Listen("127.0.0.1", 9090),
        metadata=k.special({"anyOf": [k.LISTEN_JSON, {"const": False}]}),
    )
    token_store: TokenStoreConfig = field(
        default=TokenStoreConfig(), metadata=k.section(TokenStoreConfig)
    )
    allow_from: tuple[Network, ...] = field(
        default=(), metadata=k.special({"type": "array", "items": {"type": "string"}})
    )
    inbound_token: str | None = field(default=None, metadata=k.SECRET)
    insecure_allow_any: bool = field(default=False, metadata=k.BOOL)
    unix_socket_mode: int = field(default=0o660, metadata=k.FILE_MODE)
    shutdown_grace: float = field(default=20.0, metadata=k.DURATION)
    limits: Limits = field(default=Limits(), metadata=k.section(Limits))
    #: ``readiness.require_tokens``: routes whose token gates /readyz (default: none,
    #: once each token route has had a first attempt)
    require_tokens: tuple[str, ...] = ()
    #: every file the config was read from, secrets included: watched for reload
    sources: tuple[str, ...] = ()

    def route(self, name: str) -> RouteConfig:
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)
