"""``authproxy check --explain``: the config as authproxy understood it.

Presets appear expanded into the generic auth type they stand for (``type``
first, unset options left out); every secret is masked. A ``{refresh_token}``
or ``{access_token}`` placeholder is shown as written: it is not a secret.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from proxy.config.model import Config
from proxy.config.values import Listen, Secret

_PLACEHOLDERS = frozenset({"{access_token}", "{refresh_token}"})


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return str.__str__(value) if value in _PLACEHOLDERS else "***"
    if isinstance(value, Listen):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _auth_view(auth: dict[str, Any]) -> dict[str, Any]:
    """The auth mapping as a user would write it: type first, unset options dropped."""

    def prune(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: prune(v) for k, v in node.items() if v is not None and v != {}}
        return node

    out: dict[str, Any] = {"type": auth.get("type")}
    out.update(prune({k: v for k, v in auth.items() if k != "type"}))
    return out


def _endpoints(upstream: str, auth: Any) -> dict[str, str]:
    """The URLs a route connects to itself: its upstream, and the token endpoints of
    its auth (``token_url``, a login's ``request``/``refresh``; not the browser's
    ``authorize_url`` or ``redirect_uri``)."""
    out = {"upstream": upstream}
    for f in dataclasses.fields(auth):
        value = getattr(auth, f.name)
        url = getattr(value, "url", value)
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            if f.name not in ("authorize_url", "redirect_uri"):
                out[f.name] = url
    return out


def explain(config: Config) -> str:
    doc = _plain(config)
    routes = {r.pop("name"): r for r in doc.pop("routes")}
    for route in routes.values():
        route["auth"] = _auth_view(route["auth"])
    for rc in config.routes:
        if rc.egress_proxy is not None:
            routes[rc.name]["egress_proxy"] = rc.egress_proxy.view(_endpoints(rc.upstream, rc.auth))
    doc.pop("sources", None)
    doc["routes"] = routes
    if config.unix_socket_mode is not None:
        doc["unix_socket_mode"] = oct(config.unix_socket_mode)
    out: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    return out
