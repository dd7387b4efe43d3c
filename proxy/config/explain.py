"""``authproxy check --explain``: the config as authproxy understood it.

Presets appear expanded into the generic auth type they stand for (``type``
first, unset options left out). Every secret is masked the same way, as
``'***'``: a value is a secret when it came from ``${env:}``/``${file:}`` or stands
under a secret key (:data:`proxy.config.source.SECRET_KEYS`, a preset's
``client_id`` included), and it stays one through a preset's expansion. A
``{refresh_token}`` or ``{access_token}`` placeholder is shown as written: it is
not a secret.
"""

from __future__ import annotations

import dataclasses

import yaml

from proxy.config.model import AuthConfig, Config
from proxy.config.values import Listen, Secret

_PLACEHOLDERS = frozenset({"{access_token}", "{refresh_token}"})
#: a mapping as explain prints it
View = dict[str, object]


def _plain(value: object) -> object:
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


def _prune(node: object) -> object:
    if isinstance(node, dict):
        return {k: _prune(v) for k, v in node.items() if v is not None and v != {}}
    return node


def _auth_view(auth: AuthConfig) -> View:
    """The auth mapping as a user would write it: type first, unset options dropped."""
    pruned = _prune({k: v for k, v in _mapping(auth).items() if k != "type"})
    assert isinstance(pruned, dict)
    return {"type": auth.type, **pruned}


def _endpoints(upstream: str, auth: AuthConfig) -> dict[str, str]:
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


def _mapping(value: object) -> View:
    plain = _plain(value)
    assert isinstance(plain, dict)
    return plain


def explain(config: Config) -> str:
    doc = _mapping(config)
    routes: dict[str, View] = {}
    for rc in config.routes:
        view = _mapping(rc)
        del view["name"]
        view["auth"] = _auth_view(rc.auth)
        if rc.egress_proxy is not None:
            view["egress_proxy"] = rc.egress_proxy.view(_endpoints(rc.upstream, rc.auth))
        routes[rc.name] = view
    doc.pop("sources", None)
    doc["routes"] = routes
    doc["unix_socket_mode"] = oct(config.unix_socket_mode)
    out: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    return out
