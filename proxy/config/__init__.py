"""Configuration: YAML in, frozen typed dataclasses out.

The modules, each one idea: :mod:`~proxy.config.model` (the dataclasses),
:mod:`~proxy.config.values` (durations, sizes, URLs, listen addresses),
:mod:`~proxy.config.fields` (the kinds of keys, in the model's field metadata),
:mod:`~proxy.config.source` (YAML with lines, ``${env:}``/``${file:}``),
:mod:`~proxy.config.reader` (a section into a dataclass's fields),
:mod:`~proxy.config.schema` (the sections), :mod:`~proxy.config.auth` (the auth
types), :mod:`~proxy.config.store` (``token_store``), :mod:`~proxy.config.tls`,
:mod:`~proxy.config.discovery` (RFC 8414 metadata, read at load),
:mod:`~proxy.config.presets`, :mod:`~proxy.config.explain` (``check --explain``)
and :mod:`~proxy.config.json_schema` (the editor's JSON Schema).

This package re-exports the names most callers need.
"""

from proxy.config.model import (
    AuthConfig,
    ClientCredentialsAuth,
    Config,
    InjectConfig,
    JwtBearerAuth,
    Limits,
    LoginAuth,
    NoAuth,
    RefreshTokenAuth,
    RequestSpec,
    ResponseSpec,
    RouteConfig,
    SentinelConfig,
    StaticAuth,
    TLSConfig,
    TokenStoreConfig,
)
from proxy.config.problems import ConfigError, Problem
from proxy.config.schema import DEFAULT_KEYS, ROUTE_KEYS, TOP_KEYS, default_path, load, parse
from proxy.config.values import Listen, Secret, parse_duration, parse_listen, parse_size

__all__ = [
    "DEFAULT_KEYS", "ROUTE_KEYS", "TOP_KEYS", "AuthConfig", "ClientCredentialsAuth", "Config",
    "ConfigError", "InjectConfig", "JwtBearerAuth", "Limits", "Listen", "LoginAuth", "NoAuth",
    "Problem", "RefreshTokenAuth", "RequestSpec", "ResponseSpec", "RouteConfig", "Secret",
    "SentinelConfig", "StaticAuth", "TLSConfig", "TokenStoreConfig", "default_path", "load",
    "parse", "parse_duration", "parse_listen", "parse_size",
]  # fmt: skip
