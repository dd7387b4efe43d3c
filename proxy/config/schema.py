"""The document's sections, parsed into :class:`~proxy.config.model.Config`.

Parsing happens once, at start-up (and on reload). Every problem is collected,
not just the first, and each names its key path (``routes.getpaid.auth.scope``)
and the line it stands on. Unknown keys are errors, because a typo must not pass
silently. The keys, their kinds and their defaults are the model's fields
(:mod:`proxy.config.fields`); this module holds what is particular to a section.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping

from yarl import URL

import proxy.config.fields as fields
from proxy.config.auth import parse_auth, uses_token
from proxy.config.discovery import discover
from proxy.config.model import Config, InjectConfig, Limits, Network, NoAuth, RouteConfig
from proxy.config.problems import ConfigError, Problem
from proxy.config.reader import Data, Reader, build
from proxy.config.source import Source
from proxy.config.store import lease_for, parse_token_store
from proxy.config.tls import parse_tls
from proxy.config.values import Listen, http_url, parse_listen, same_address

#: top-level keys that are not fields of Config, with their JSON Schema
DOCUMENT_KEYS: dict[str, fields.JSON] = {
    "defaults": fields.ref("Defaults"),
    "readiness": {
        "type": "object",
        "properties": {"require_tokens": {"type": "array", "items": {"type": "string"}}},
        "additionalProperties": False,
    },
    # key paths whose ${env:}/${file:} may be empty
    "allow_empty_secrets": {"type": "array", "items": {"type": "string"}},
}
TOP_KEYS = fields.key_names(Config) | set(DOCUMENT_KEYS)
ROUTE_KEYS = fields.key_names(RouteConfig)
DEFAULT_KEYS = {f.name for f, _ in fields.keys(RouteConfig) if fields.inherits(f)}
#: read by their own functions
_ROUTE_READ = ROUTE_KEYS - {"prefix", "upstream"}


def parse(text: str, environ: Mapping[str, str] | None = None, source: str = "config") -> Config:
    """Parse a YAML document into a :class:`Config`, or raise :class:`ConfigError`."""
    src = Source(text, os.environ if environ is None else environ)
    if src.problems:
        raise ConfigError(src.problems, source)
    r = Reader(src)
    top = r.section(src.root, "", TOP_KEYS)
    _allow_empty(r, top)
    if src.root is None:
        r.error("", "the file is empty; it needs at least routes")
    elif not isinstance(src.root, dict):
        r.error("", "the top level must be a mapping")
    values = r.read(Config, top, "")
    values["admin_listen"] = _admin_listen(r, top)
    values["token_store"] = store = parse_token_store(r, top.get("token_store"))
    values["limits"] = limits = _limits(r, top.get("limits"))
    routes = _routes(r, top, src.root is not None, limits)
    raw_store = top.get("token_store")
    if not (isinstance(raw_store, dict) and "lock_lease" in raw_store):
        values["token_store"] = dataclasses.replace(
            store, lock_lease=lease_for([rc.token_timeout for rc in routes])
        )
    values["require_tokens"] = _require_tokens(r, top.get("readiness"), routes)
    values["allow_from"] = _allow_from(r, top.get("allow_from"))
    _check_top(r, values)
    if not src.problems:  # only a config otherwise valid is worth a network round trip
        routes = discover(routes, r.error)
    values["routes"] = tuple(routes)
    values["sources"] = tuple(dict.fromkeys(src.files))
    config = build(Config, values)
    if src.problems:
        src.problems.sort(key=lambda pr: pr.line or 0)
        raise ConfigError(src.problems, source)
    return config


def _allow_empty(r: Reader, top: Data) -> None:
    allow_empty = top.get("allow_empty_secrets") or []
    if not isinstance(allow_empty, list) or not all(isinstance(k, str) for k in allow_empty):
        r.error("allow_empty_secrets", "must be a list of key paths")
    else:
        r.source.allow_empty = set(allow_empty)


def _admin_listen(r: Reader, top: Data) -> Listen | None:
    if top.get("admin_listen") is False:  # `admin_listen: false` turns it off
        return None
    return r.value(
        top, "admin_listen", "", parse_listen, fields.default_for(Config, "admin_listen")
    )


def _check_top(r: Reader, values: Data) -> None:
    listen, admin = values["listen"], values["admin_listen"]
    if isinstance(listen, Listen) and isinstance(admin, Listen) and same_address(listen, admin):
        r.error("admin_listen", f"{admin} is also `listen`: the admin port needs its own address")
    inbound = values["inbound_token"]
    if isinstance(inbound, str) and len(inbound) < 16:
        r.error("inbound_token", "is too short to be a secret (16 characters or more)")
    open_to = values["allow_from"] or inbound or values["insecure_allow_any"]
    if isinstance(listen, Listen) and not listen.is_loopback and not open_to:
        r.error(
            "listen",
            f"{listen} is beyond loopback: set allow_from, inbound_token, "
            "or insecure_allow_any: true",
        )


def _limits(r: Reader, data: object) -> Limits:
    d = r.section(data, "limits", fields.key_names(Limits))
    return build(Limits, r.read(Limits, d, "limits"))


def _routes(r: Reader, top: Data, has_root: bool, limits: Limits) -> list[RouteConfig]:
    dd = r.section(top.get("defaults"), "defaults", DEFAULT_KEYS)
    defaults = r.read(RouteConfig, dd, "defaults", only=DEFAULT_KEYS)
    defaults.update(max_body=limits.max_body, max_concurrent=limits.max_concurrent)
    routes: list[RouteConfig] = []
    raw = top.get("routes")
    if not raw:
        if has_root:
            r.error("routes", "at least one route is required")
    elif not isinstance(raw, dict):
        r.error("routes", "must be a mapping of route names to routes")
    else:
        for name, data in raw.items():
            rc = _route(r, str(name), data, f"routes.{name}", defaults)
            if rc is not None:
                routes.append(rc)
    seen: dict[str, str] = {}
    for rc in routes:
        if rc.prefix in seen:
            r.error(
                f"routes.{rc.name}.prefix", f"{rc.prefix} is also the prefix of {seen[rc.prefix]}"
            )
        seen[rc.prefix] = rc.name
    return routes


def _route(r: Reader, name: str, data: object, path: str, defaults: Data) -> RouteConfig | None:
    d = r.section(data, path, ROUTE_KEYS)
    if not isinstance(data, dict):
        if data is None:  # `api:` with nothing under it must not silently drop the route
            r.error(path, "is empty: a route needs at least upstream and auth")
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        r.error(path, "route names may use only letters, digits, '_', '-' and '.'")
    prefix = _prefix(r, d, path, name)
    auth, preset, preset_upstream = parse_auth(r, d.get("auth"), f"{path}.auth")
    if "auth" not in d:
        r.error(f"{path}.auth", "is required (use {type: none} for no authentication)")
    # A preset that failed to expand has said why already; don't also ask for upstream.
    upstream = _upstream(r, d, path, preset_upstream or (None if preset else fields.REQUIRED))
    ind = r.section(d.get("inject"), f"{path}.inject", fields.key_names(InjectConfig))
    inject = build(InjectConfig, r.read(InjectConfig, ind, f"{path}.inject"))
    if "{access_token}" not in inject.format:
        r.error(f"{path}.inject.format", "must contain {access_token}")
    tls = parse_tls(r, d.get("tls"), f"{path}.tls")
    if getattr(auth, "client_auth", None) == "tls_client_auth" and not tls.client_cert:
        r.error(f"{path}.auth.client_auth", "tls_client_auth needs the route's tls.client_cert")
    values = r.read(RouteConfig, d, path, defaults=defaults, only=_ROUTE_READ)
    values.update(name=name, prefix=prefix, upstream=upstream, auth=auth or NoAuth())
    values.update(inject=inject, tls=tls, preset=preset)
    return build(RouteConfig, values)


def _prefix(r: Reader, d: Data, path: str, name: str) -> str:
    prefix = r.text(d, "prefix", path, f"/{name}/") or f"/{name}/"
    if not prefix.startswith("/"):
        r.error(f"{path}.prefix", "must start with /")
    if not prefix.endswith("/"):
        prefix += "/"
    if any(seg in ("..", ".") for seg in prefix.split("/")) or "%" in prefix or "?" in prefix:
        r.error(f"{path}.prefix", "must be a plain path without '..', '%' or '?'")
    return prefix


def _upstream(r: Reader, d: Data, path: str, fallback: object) -> str:
    upstream = r.value(d, "upstream", path, http_url, fallback)
    if not upstream:
        return ""
    u = URL(upstream)
    if u.query_string or u.fragment:
        r.error(f"{path}.upstream", "must not carry a query or fragment")
    return upstream if upstream.endswith("/") else upstream + "/"


def _require_tokens(r: Reader, data: object, routes: list[RouteConfig]) -> tuple[str, ...]:
    """``readiness: {require_tokens: [route, ...]}``: each a route that uses a token."""
    names = r.section(data, "readiness", {"require_tokens"}).get("require_tokens")
    if names is None:
        return ()
    if not isinstance(names, list):
        r.error("readiness.require_tokens", "must be a list of route names")
        return ()
    by_name = {rc.name: rc for rc in routes}
    out: list[str] = []
    for i, name in enumerate(names):
        rc = by_name.get(str(name))
        if rc is None:
            known = ", ".join(sorted(by_name)) or "none"
            r.error(f"readiness.require_tokens[{i}]", f"{name!r} is not a route (routes: {known})")
        elif not uses_token(rc.auth):
            r.error(f"readiness.require_tokens[{i}]", f"route {name!r} uses no token")
        else:
            out.append(rc.name)
    return tuple(out)


def _allow_from(r: Reader, raw: object) -> tuple[Network, ...]:
    allow: list[Network] = []
    if not isinstance(raw, list):
        if raw:
            r.error("allow_from", "must be a list of CIDRs")
        return ()
    for i, item in enumerate(raw):
        try:
            allow.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            r.error(f"allow_from[{i}]", f"{item!r} is not an IP network (CIDR)")
    return tuple(allow)


def load(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and parse the file at ``path``."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(
            [Problem("", f"cannot read config file: {exc.strerror or exc}")], path
        ) from None
    config = parse(text, environ, source=path)
    return dataclasses.replace(config, sources=(os.path.abspath(path), *config.sources))


def default_path(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("AUTHPROXY_CONFIG") or "config.yaml"
