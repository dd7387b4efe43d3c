"""The kinds of config keys, carried in the model's field metadata.

A field of a model dataclass is a config key when its metadata holds a
:class:`Kind`: how the YAML value becomes the typed value, and the JSON Schema of
what may be written. The parser (:mod:`proxy.config.schema`) and the editor schema
(:mod:`proxy.config.json_schema`) both read the fields, so a key, its default and
its type are written once, in :mod:`proxy.config.model`.

A kind without ``convert`` is a section or a key with rules of its own, parsed by
the section function that owns it; ``section`` names a nested model dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import proxy.config.values as v
from proxy.http1.egress import MAPPING_KEYS, EgressConfig, parse_setting
from proxy.jose import METHODS

#: a JSON Schema fragment
JSON = dict[str, object]
#: a YAML value (secrets resolved) and the environment, into the typed value
Convert = Callable[[object, Mapping[str, str]], object]
#: a field's metadata
Meta = Mapping[str, object]


@dataclass(frozen=True)
class Kind:
    json: JSON
    convert: Convert | None = None
    section: type | None = None


def kind_of(f: dataclasses.Field[object]) -> Kind | None:
    found = f.metadata.get("kind")
    return found if isinstance(found, Kind) else None


def keys(cls: type) -> Iterator[tuple[dataclasses.Field[object], Kind]]:
    """The fields of ``cls`` that are config keys, with their kinds."""
    for f in dataclasses.fields(cls):
        k = kind_of(f)
        if k is not None:
            yield f, k


def key_names(cls: type) -> set[str]:
    return {f.name for f, _ in keys(cls)}


def default_of(f: dataclasses.Field[object]) -> object:
    """The field's default, or :data:`REQUIRED`."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def default_for(cls: type, name: str) -> object:
    (found,) = (f for f in dataclasses.fields(cls) if f.name == name)
    return default_of(found)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: the default of a key that must be given
REQUIRED: object = _Required()


def meta(kind: Kind, *, inherit: bool = False) -> Meta:
    """Field metadata; ``inherit``: the route key may be set for all under ``defaults``."""
    return {"kind": kind, "inherit": inherit}


def inherited(m: Meta) -> Meta:
    return {**m, "inherit": True}


def inherits(f: dataclasses.Field[object]) -> bool:
    return f.metadata.get("inherit") is True


def _plain(fn: Callable[[object], object], json: JSON) -> Meta:
    return meta(Kind(json, lambda value, _env: fn(value)))


def _egress(value: object, environ: Mapping[str, str]) -> EgressConfig | None:
    return parse_setting(value, environ)


#: ``${env:NAME}`` or ``${file:/path}``: allowed wherever a typed value is
REF: JSON = {"type": "string", "pattern": r"\$\{(env|file):[^}]*\}"}
_SCALAR: JSON = {"type": ["string", "number"]}


def _or_ref(*alternatives: JSON) -> JSON:
    return {"anyOf": [*alternatives, REF]}


def ref(name: str) -> JSON:
    return {"$ref": f"#/$defs/{name}"}


def section(cls: type) -> Meta:
    return meta(Kind(ref(cls.__name__), section=cls))


def special(json: JSON) -> Meta:
    """A key parsed by the section function that owns it."""
    return meta(Kind(json))


def choice(*options: str) -> Meta:
    def conv(value: object) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {value!r}")
        return str(value)

    return _plain(conv, {"enum": list(options)})


STRING = _plain(v.as_str, _SCALAR)
SECRET = _plain(v.as_secret, {**_SCALAR, "description": "a secret: ${env:NAME} or ${file:/path}"})
BOOL = _plain(v.as_bool, {"type": "boolean"})
DURATION = _plain(
    v.parse_duration,
    _or_ref({"type": "number", "minimum": 0}, {"type": "string", "pattern": v.DURATION_PATTERN}),
)
SIZE = _plain(
    v.parse_size,
    _or_ref({"type": "integer", "minimum": 0}, {"type": "string", "pattern": v.SIZE_PATTERN}),
)
POSITIVE = _plain(v.positive_int, {"type": "integer", "minimum": 1})
URL = _plain(v.http_url, _or_ref({"type": "string", "pattern": "^https?://"}))
LISTEN_JSON: JSON = {"type": "string", "pattern": r"^(unix:/.*|.*:[0-9]+)$"}
LISTEN = _plain(v.parse_listen, LISTEN_JSON)
FILE_MODE = _plain(
    v.file_mode,
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 0o777}, {"type": "string"}]},
)
HEADER_NAME = _plain(v.header_name, {"type": "string", "pattern": v.HEADER_NAME_PATTERN})
HEADER_VALUE = _plain(v.header_value, {"type": "string"})
SCOPE = _plain(v.scope, {"anyOf": [_SCALAR, {"type": "array", "items": {"type": "string"}}]})
RESOURCE = _plain(
    v.resource, {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
)
FERNET_KEY = _plain(v.fernet_key, {"type": "string"})
CLIENT_AUTH = choice(*METHODS)
EGRESS = meta(
    Kind(
        {
            "anyOf": [
                {"type": "string"},
                {"const": False},
                {"type": "null"},
                {"type": "object", "propertyNames": {"enum": sorted(MAPPING_KEYS)}},
            ]
        },
        _egress,
    )
)
#: a mapping whose values are resolved and kept (``extra``, ``headers``, ``claims``)
MAPPING_KIND = Kind({"type": "object"})
MAPPING = meta(MAPPING_KIND)
#: any JSON value (a login request's ``json`` body)
ANY = special({})
