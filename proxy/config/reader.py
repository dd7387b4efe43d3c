"""Reading one section of the document into the fields of a model dataclass.

:meth:`Reader.read` converts every key of a dataclass with the kind in its field
metadata and the field's default; a section function adds what is particular to
it (a default that depends on another key, a rule across keys). Every problem
goes to the source with its key path, and reading goes on, so that one run
reports them all.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from typing import TypeVar

import proxy.config.fields as fields
from proxy.config.fields import REQUIRED, Convert
from proxy.config.source import SECRET_KEYS, Source
from proxy.config.values import as_str

T = TypeVar("T")
#: a section as YAML gave it
Data = dict[str, object]


def build(cls: Callable[..., T], values: Mapping[str, object]) -> T:
    """``cls`` from values read for its fields (a failed one is None: the config
    is invalid then, and is never used)."""
    return cls(**values)


def closest(key: str, allowed: Collection[str]) -> str | None:
    found = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)
    return found[0] if found else None


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Reader:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.error = source.error
        self.resolve = source.resolve

    def section(self, data: object, path: str, allowed: Collection[str]) -> Data:
        """``data`` as a mapping (empty if absent); each unknown key is a problem."""
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.error(path, "must be a mapping")
            return {}
        for key in data:
            if key not in allowed:
                hint = closest(key, allowed)
                more = f" (did you mean {hint!r}?)" if hint else ""
                self.error(join(path, key), f"unknown key{more}")
        return data

    def value(
        self, data: Data, key: str, path: str, conv: Callable[[object], T], default: object
    ) -> T | None:
        """``data[key]`` converted, or ``default`` (a problem if :data:`REQUIRED`)."""
        sub = join(path, key)
        if data.get(key) is None:
            if default is REQUIRED:
                self.error(sub, "is required")
                return None
            return default  # type: ignore[return-value]
        try:
            return conv(self.resolve(data[key], sub, key in SECRET_KEYS))
        except (ValueError, TypeError) as exc:
            self.error(sub, str(exc))
            return None if default is REQUIRED else default  # type: ignore[return-value]

    def text(self, data: Data, key: str, path: str, default: object = REQUIRED) -> str | None:
        return self.value(data, key, path, as_str, default)

    def mapping(self, data: Data, key: str, path: str) -> Data:
        """A mapping key (``extra``, ``headers``): resolved, and empty if absent."""
        raw = data.get(key)
        if raw is None:
            return {}
        resolved = self.resolve(raw, join(path, key))
        if not isinstance(resolved, dict):
            self.error(join(path, key), "must be a mapping")
            return {}
        return resolved

    def read(
        self,
        cls: type,
        data: Data,
        path: str,
        *,
        defaults: Mapping[str, object] | None = None,
        only: Collection[str] | None = None,
    ) -> dict[str, object]:
        """The fields of ``cls`` that have a converter (or are mappings), from ``data``."""
        out: dict[str, object] = {}
        for f, kind in fields.keys(cls):
            if only is not None and f.name not in only:
                continue
            if kind is fields.MAPPING_KIND:
                out[f.name] = self.mapping(data, f.name, path)
            elif kind.convert is not None:
                default = (defaults or {}).get(f.name, fields.default_of(f))
                out[f.name] = self.value(data, f.name, path, self._bind(kind.convert), default)
        return out

    def _bind(self, convert: Convert) -> Callable[[object], object]:
        environ = self.source.environ
        return lambda value: convert(value, environ)
