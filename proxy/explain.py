"""``authproxy check --explain``: the config as authproxy understood it.

Presets appear expanded into the generic auth type they stand for; every secret
is masked.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from proxy.config import Config, Listen, Secret


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return "***"
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


def explain(config: Config) -> str:
    doc = _plain(config)
    routes = {r.pop("name"): r for r in doc.pop("routes")}
    doc.pop("sources", None)
    doc["routes"] = routes
    if config.unix_socket_mode is not None:
        doc["unix_socket_mode"] = oct(config.unix_socket_mode)
    out: str = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    return out
