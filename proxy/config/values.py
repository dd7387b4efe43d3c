"""The value types of the config: one YAML scalar into one typed value.

Each converter takes what YAML gave (secrets already resolved) and returns the
typed value, or raises ``ValueError`` with a message fit for a config error. A
message never echoes a value that may be a secret.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass

from yarl import URL


class Secret(str):
    """A string that came from a secret; shows as ``***`` in reprs and dumps."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3,
}  # fmt: skip
#: the JSON Schema patterns of the two (proxy.config.json_schema)
DURATION_PATTERN = _DURATION.pattern
SIZE_PATTERN = _SIZE.pattern
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


def parse_duration(value: object) -> float:
    """``500ms``, ``60s``, ``5m``, ``1h``, or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 60s or 5m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"expected a duration such as 500ms, 60s or 5m, got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: object) -> int:
    """``64KiB``, ``1MiB``, ``100MB``, or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB or 1MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"expected a size such as 64KiB or 1MiB, got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


@dataclass(frozen=True)
class Listen:
    """Where a server listens: TCP ``host:port`` or ``unix:/path``."""

    host: str = "127.0.0.1"
    port: int = 8080
    path: str | None = None

    @property
    def is_loopback(self) -> bool:
        if self.path is not None:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(value: object) -> Listen:
    text = str(value).strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise ValueError("a unix socket needs an absolute path, as unix:/run/authproxy.sock")
        return Listen(path=path)
    m = re.match(r"^(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]*)):(\d+)$", text)
    if not m:
        raise ValueError(f"expected host:port or unix:/path, got {text!r}")
    host = m.group(1) or m.group(2) or "0.0.0.0"
    port = int(m.group(3))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return Listen(host=host, port=port)


def same_address(a: Listen, b: Listen) -> bool:
    """Two listeners that cannot both bind (port 0 means "any free one": never equal)."""
    if a.path is not None or b.path is not None:
        return a.path == b.path
    wildcard = ("0.0.0.0", "::", "")
    return a.port == b.port != 0 and (a.host == b.host or a.host in wildcard or b.host in wildcard)


def as_str(v: object) -> str:
    if isinstance(v, dict | list):
        raise ValueError("must be a string")
    return v if isinstance(v, str) else str(v)


def as_secret(v: object) -> Secret:
    return v if isinstance(v, Secret) else Secret(as_str(v))


def as_bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def positive_int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"must be a whole number of 1 or more, got {v!r}")
    return v


def file_mode(v: object) -> int:
    m = v if isinstance(v, int) and not isinstance(v, bool) else int(str(v), 8)
    if not 0 <= m <= 0o777:
        raise ValueError("must be a file mode such as 0660")
    return m


def header_name(v: object) -> str:
    text = as_str(v)
    if not re.fullmatch(HEADER_NAME_PATTERN[1:-1], text):
        raise ValueError(f"{text!r} is not a valid header name")
    return text


def header_value(v: object) -> Secret:
    text = as_str(v)
    if any(c in text for c in "\r\n\x00"):
        raise ValueError("must not contain line breaks")  # never echo the value: a secret
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("must be Latin-1 text to go in a header") from None
    return Secret(text)


def http_url(v: object) -> str:
    """An ``http://`` or ``https://`` URL with a host."""
    text = as_str(v)
    try:
        url = URL(text)
    except ValueError as exc:
        raise ValueError(f"is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an http:// or https:// URL with a host")
    return text


def scope(v: object) -> str:
    """A scope: a string, or a list of them joined by spaces."""
    if isinstance(v, list):
        return " ".join(str(s) for s in v)
    return as_str(v)


def resource(value: object) -> tuple[str, ...]:
    """RFC 8707 ``resource``: an absolute URI without fragment, or a list of them."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError("must be an absolute URI or a list of them")
    for item in items:
        u = URL(item)
        if not u.is_absolute() or u.fragment or "#" in item:
            raise ValueError(f"{item!r} must be an absolute URI without a fragment (RFC 8707)")
    return tuple(str(v) for v in items)


def fernet_key(v: object) -> Secret:
    """A Fernet key: 32 bytes in url-safe base64. Checked here, so that ``check``
    finds a bad key, without importing cryptography (only the store needs it)."""
    key = as_secret(v)
    try:
        raw = base64.urlsafe_b64decode(key.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(
            "is not a Fernet key (32 url-safe base64-encoded bytes); make one with: python "
            "-c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        )
    return key


def param(v: object) -> str:
    """An authorization-request parameter as it goes in the URL."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    return v if isinstance(v, str) else str(v)  # a secret stays a Secret
