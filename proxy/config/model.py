"""Configuration: YAML in, frozen typed dataclasses out.

Parsing happens once, at start-up (and on reload). Every problem is collected,
not just the first, and each names its key path (``routes.getpaid.auth.scope``)
and the line it stands on. Unknown keys are errors, because a typo must not pass
silently.

Secrets are written as ``${env:NAME}`` or ``${file:/path}`` and resolved here.
A resolved value is a :class:`Secret`: a ``str`` whose ``repr`` is masked, so
that it cannot leak through a log line or ``check --explain``. An error about a
secret names the key and the variable or file, never the value.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import yaml
from yarl import URL

from proxy.config.auth import COMMON, oauth_keys
from proxy.config.store import SentinelConfig as SentinelConfig
from proxy.config.store import TokenStoreConfig as TokenStoreConfig
from proxy.config.store import lease_for, parse_token_store
from proxy.http1.egress import EgressConfig, parse_setting

T = TypeVar("T")


class Secret(str):
    """A string that came from a secret; shows as ``***`` in reprs and dumps."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


# -- errors -------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    line: int | None = None

    def format(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        key = f"{self.path}: " if self.path else ""
        return f"{where}: {key}{self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(p.format(source) for p in problems))


# -- value types ----------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3,
}  # fmt: skip
_SECRET_REF = re.compile(r"\$\{(env|file):([^}]*)\}")
#: any other ``${...}``: a typo or an unsupported store (``${vault:x}``, ``${ENV:X}``)
_OTHER_REF = re.compile(r"\$\{([^}:]*)(:?)[^}]*\}")


def parse_duration(value: Any) -> float:
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


def parse_size(value: Any) -> int:
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


def parse_listen(value: Any) -> Listen:
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


# -- the configuration ----------------------------------------------------------


@dataclass(frozen=True)
class TLSConfig:
    """TLS towards a route's upstream and its token endpoint."""

    verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True)
class InjectConfig:
    header: str = "Authorization"
    format: str = "Bearer {access_token}"


@dataclass(frozen=True)
class NoAuth:
    type: Literal["none"] = "none"


@dataclass(frozen=True)
class StaticAuth:
    header: str
    value: str
    type: Literal["static"] = "static"


@dataclass(frozen=True)
class ClientCredentialsAuth:
    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None
    audience: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    body: Literal["form", "json"] = "form"
    client_auth: str = "body"
    default_ttl: float = 300.0
    type: Literal["oauth2_client_credentials"] = "oauth2_client_credentials"
    # issue 13's standards (proxy/config/auth.py)
    private_key: str | None = None
    key_id: str | None = None
    resource: tuple[str, ...] = ()
    issuer: str | None = None
    discovery_url: str | None = None
    dpop: bool = False


@dataclass(frozen=True)
class RefreshTokenAuth:
    token_url: str
    client_id: str
    client_secret: str
    refresh_token: str | None = None
    authorize_url: str | None = None
    redirect_uri: str | None = None
    scope: str | None = None
    pkce: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    client_auth: str = "body"
    default_ttl: float = 300.0
    type: Literal["oauth2_refresh_token"] = "oauth2_refresh_token"
    # issue 13's standards (proxy/config/auth.py)
    private_key: str | None = None
    key_id: str | None = None
    resource: tuple[str, ...] = ()
    issuer: str | None = None
    discovery_url: str | None = None
    dpop: bool = False
    authorize_params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JwtBearerAuth:
    """RFC 7523 section 2.1: a signed assertion exchanged for an access token."""

    token_url: str
    private_key: str
    claims: Mapping[str, Any]
    key_id: str | None = None
    scope: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    client_id: str = ""
    client_secret: str = ""
    client_auth: str = "none"
    resource: tuple[str, ...] = ()
    issuer: str | None = None
    discovery_url: str | None = None
    dpop: bool = False
    assertion_ttl: float = 300.0
    default_ttl: float = 300.0
    type: Literal["oauth2_jwt_bearer"] = "oauth2_jwt_bearer"


@dataclass(frozen=True)
class RequestSpec:
    """An HTTP request template. Strings may hold ``{access_token}``/``{refresh_token}``."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    form: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ResponseSpec:
    """Dotted paths into a JSON answer (``data.access_token``)."""

    access_token: str = "access_token"
    expires_at: str | None = None
    expires_in: str | None = None
    refresh_token: str | None = None
    refresh_expires_at: str | None = None
    refresh_expires_in: str | None = None


@dataclass(frozen=True)
class LoginAuth:
    request: RequestSpec
    response: ResponseSpec
    refresh: RequestSpec | None = None
    refresh_response: ResponseSpec | None = None
    default_ttl: float = 300.0
    type: Literal["login"] = "login"


AuthConfig = (
    NoAuth | StaticAuth | ClientCredentialsAuth | RefreshTokenAuth | LoginAuth | JwtBearerAuth
)
TokenAuth = ClientCredentialsAuth | RefreshTokenAuth | LoginAuth | JwtBearerAuth


@dataclass(frozen=True)
class RouteConfig:
    name: str
    prefix: str
    upstream: str
    auth: AuthConfig
    inject: InjectConfig = InjectConfig()
    pass_client_authorization: bool = False
    tls: TLSConfig = TLSConfig()
    refresh_before: float = 60.0
    connect_timeout: float = 5.0
    timeout: float = 60.0
    #: inactivity while a body streams, either direction; re-armed per chunk
    read_timeout: float = 60.0
    #: a request body that stops arriving (408 request_timeout)
    body_timeout: float = 30.0
    token_timeout: float = 10.0
    retry_on_401: bool = True
    max_replay_body: int = 1024**2
    max_body: int = 100 * 1024**2
    max_concurrent: int = 1000
    preset: str | None = None
    #: the egress (corporate HTTP) proxy for the upstream and token endpoint; None: direct
    egress_proxy: EgressConfig | None = None
    refused_cooldown: float = 5.0
    backoff_cap: float = 10.0


@dataclass(frozen=True)
class Limits:
    max_body: int = 100 * 1024**2
    max_header_size: int = 16 * 1024
    max_concurrent: int = 1000
    idle_timeout: float = 75.0
    #: the listen queue of the proxy port
    backlog: int = 1024
    #: request bodies buffered for a 401 replay, across all routes at once
    max_replay_total: int = 64 * 1024**2


@dataclass(frozen=True)
class Config:
    routes: tuple[RouteConfig, ...]
    listen: Listen = Listen("127.0.0.1", 8080)
    admin_listen: Listen | None = Listen("127.0.0.1", 9090)
    token_store: TokenStoreConfig = TokenStoreConfig()
    allow_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    inbound_token: str | None = None
    insecure_allow_any: bool = False
    unix_socket_mode: int = 0o660
    shutdown_grace: float = 20.0
    limits: Limits = Limits()
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


# -- loading ---------------------------------------------------------------------

_MISSING: Any = object()

TOP_KEYS = {
    "listen", "admin_listen", "token_store", "defaults", "routes", "allow_from",
    "inbound_token", "insecure_allow_any", "unix_socket_mode", "shutdown_grace", "limits",
    "readiness",
}  # fmt: skip
TOP_KEYS |= {"allow_empty_secrets"}  # key paths whose ${env:}/${file:} may be empty
DEFAULT_KEYS = {
    "refresh_before", "connect_timeout", "timeout", "token_timeout", "retry_on_401",
    "max_replay_body", "read_timeout", "body_timeout", "egress_proxy",
}  # fmt: skip
DEFAULT_KEYS |= {"refused_cooldown", "backoff_cap"}  # token layer (proxy/tokens/timing.py)
ROUTE_KEYS = DEFAULT_KEYS | {
    "prefix", "upstream", "auth", "inject", "pass_client_authorization", "tls",
    "max_concurrent", "max_body",
}  # fmt: skip
#: keys whose values are secrets even when written literally
SECRET_KEYS = {
    "client_secret", "password", "api_key", "refresh_token", "value", "inbound_token",
    "encryption_key", "clientSecret", "private_key",
}  # fmt: skip


class _Loader:
    """Turns a YAML node tree into plain values, noting the line of every key path."""

    def __init__(self, text: str, problems: list[Problem]) -> None:
        self.lines: dict[str, int] = {}
        self.problems = problems
        self.files: list[str] = []
        self._ctor = yaml.SafeLoader("")
        self.root: Any = None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            if node is not None:
                # Constructing values can fail too (an unknown tag, `=` alone).
                self.root = self._convert(node, "")
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            problems.append(Problem("", f"YAML syntax error: {reason}", line))
            self.root = None

    def _convert(self, node: yaml.Node, path: str) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = str(self._ctor.construct_object(key_node, deep=True))
                sub = f"{path}.{key}" if path else key
                self.lines[sub] = key_node.start_mark.line + 1
                if key in out:
                    self.problems.append(Problem(sub, "duplicate key", self.lines[sub]))
                out[key] = self._convert(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._convert(v, f"{path}[{i}]") for i, v in enumerate(node.value)]
        return self._ctor.construct_object(node, deep=True)


class _Parser:
    def __init__(self, loader: _Loader, environ: Mapping[str, str]) -> None:
        self.loader = loader
        self.problems = loader.problems
        self.environ = environ
        self.files: list[str] = []
        #: key paths (``routes.api.auth.client_secret``) allowed an empty secret
        self.allow_empty: set[str] = set()

    def error(self, path: str, message: str) -> None:
        line = self.loader.lines.get(path)
        probe = path
        while line is None and probe:
            probe = probe.rpartition(".")[0]
            line = self.loader.lines.get(probe)
        self.problems.append(Problem(path, message, line))

    # secrets ---------------------------------------------------------------

    def resolve(self, value: Any, path: str, secret: bool = False) -> Any:
        """Resolve ``${env:}``/``${file:}`` in strings, recursively."""
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{path}.{k}", k in SECRET_KEYS) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        found = False

        def sub(m: re.Match[str]) -> str:
            nonlocal found
            found = True
            kind, ref = m.group(1), m.group(2).strip()
            if kind == "env":
                if ref not in self.environ:
                    self.error(path, f"environment variable {ref} is not set")
                    return ""
                got = self.environ[ref]
                where = f"environment variable {ref}"
            else:
                self.files.append(ref)
                try:
                    with open(ref, encoding="utf-8") as fh:
                        got = fh.read().rstrip("\r\n")
                except OSError as exc:
                    self.error(path, f"cannot read secret file {ref}: {exc.strerror or exc}")
                    return ""
                where = f"secret file {ref}"
            if not got and path not in self.allow_empty:
                self.error(path, f"{where} is empty (list {path} in allow_empty_secrets if meant)")
            return got

        out = _SECRET_REF.sub(sub, value)
        # Scan what was written, never a resolved value: that could be a secret.
        for other in _OTHER_REF.finditer(_SECRET_REF.sub("", value)):
            scheme = other.group(1) + other.group(2)
            self.error(
                path,
                f"unknown secret reference ${{{scheme}...}}: only ${{env:NAME}} and "
                "${file:/path} are read (names are case-sensitive)",
            )
        return Secret(out) if (found or secret) else out

    # typed getters -----------------------------------------------------------

    def section(self, data: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.error(path, "must be a mapping")
            return {}
        for key in data:
            if key not in allowed:
                hint = _closest(key, allowed)
                more = f" (did you mean {hint!r}?)" if hint else ""
                self.error(f"{path}.{key}" if path else key, f"unknown key{more}")
        return data

    def value(
        self, data: dict[str, Any], key: str, path: str, conv: Callable[[Any], T], default: Any
    ) -> T:
        sub = f"{path}.{key}" if path else key
        if key not in data or data[key] is None:
            if default is _MISSING:
                self.error(sub, "is required")
                return None  # type: ignore[return-value]
            return default  # type: ignore[no-any-return]
        try:
            return conv(self.resolve(data[key], sub, key in SECRET_KEYS))
        except (ValueError, TypeError) as exc:
            self.error(sub, str(exc))
            return default if default is not _MISSING else None  # type: ignore[return-value]

    def string(self, data: dict[str, Any], key: str, path: str, default: Any = _MISSING) -> Any:
        return self.value(data, key, path, _as_str, default)

    def boolean(self, data: dict[str, Any], key: str, path: str, default: bool) -> bool:
        return self.value(data, key, path, _as_bool, default)

    def duration(self, data: dict[str, Any], key: str, path: str, default: float) -> float:
        return self.value(data, key, path, parse_duration, default)

    def size(self, data: dict[str, Any], key: str, path: str, default: int) -> int:
        return self.value(data, key, path, parse_size, default)

    def egress(
        self, data: dict[str, Any], key: str, path: str, default: EgressConfig | None
    ) -> EgressConfig | None:
        return self.value(data, key, path, lambda v: parse_setting(v, self.environ), default)

    def choice(
        self, data: dict[str, Any], key: str, path: str, options: tuple[str, ...], default: str
    ) -> Any:
        def conv(v: Any) -> str:
            if v not in options:
                raise ValueError(f"must be one of {', '.join(options)}; got {v!r}")
            return str(v)

        return self.value(data, key, path, conv, default)


def _fernet_key(v: Any) -> Secret:
    """A Fernet key: 32 bytes in url-safe base64. Checked here, so that ``check``
    finds a bad key, without importing cryptography (only the store needs it)."""
    key = Secret(_as_str(v))
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


def _as_str(v: Any) -> str:
    if isinstance(v, dict | list):
        raise ValueError("must be a string")
    return v if isinstance(v, str) else str(v)


def _as_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _header_name(v: Any) -> str:
    text = _as_str(v)
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", text):
        raise ValueError(f"{text!r} is not a valid header name")
    return text


def _header_value(v: Any) -> Secret:
    text = _as_str(v)
    if any(c in text for c in "\r\n\x00"):
        raise ValueError("must not contain line breaks")  # never echo the value: a secret
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("must be Latin-1 text to go in a header") from None
    return Secret(text)


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"must be a whole number of 1 or more, got {v!r}")
    return v


def _closest(key: str, allowed: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.75)
    return found[0] if found else None


def _http_url(v: Any) -> str:
    text = _as_str(v)
    try:
        url = URL(text)
    except ValueError as exc:
        raise ValueError(f"is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an http:// or https:// URL with a host")
    return text


def _scope(v: Any) -> str:
    if isinstance(v, list):
        return " ".join(str(s) for s in v)
    return _as_str(v)


# -- sections ---------------------------------------------------------------------


def _parse_tls(p: _Parser, data: Any, path: str) -> TLSConfig:
    d = p.section(data, path, {"verify", "ca_file", "client_cert", "client_key"})
    tls = TLSConfig(
        verify=p.boolean(d, "verify", path, True),
        ca_file=p.string(d, "ca_file", path, None),
        client_cert=p.string(d, "client_cert", path, None),
        client_key=p.string(d, "client_key", path, None),
    )
    for key in ("ca_file", "client_cert", "client_key"):
        f = getattr(tls, key)
        if f and not os.path.isfile(f):
            p.error(f"{path}.{key}", f"file {f} does not exist")
    if tls.client_key and not tls.client_cert:
        p.error(f"{path}.client_key", "needs client_cert too")
    _check_tls_files(p, tls, path)
    return tls


def _check_tls_files(p: _Parser, tls: TLSConfig, path: str) -> None:
    """Load the PEM files once now, so that a bad one is a config error, not a crash at start."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file and os.path.isfile(tls.ca_file):
        try:
            ctx.load_verify_locations(cafile=tls.ca_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            p.error(f"{path}.ca_file", f"cannot load CA certificates from {tls.ca_file}: {exc}")
    cert, key = tls.client_cert, tls.client_key
    if cert and os.path.isfile(cert) and (not key or os.path.isfile(key)):
        try:
            # no password prompt: an encrypted key fails here instead of waiting for a TTY
            ctx.load_cert_chain(cert, key, password=lambda: b"")
        except (ssl.SSLError, OSError, ValueError) as exc:
            p.error(
                f"{path}.client_cert",
                f"cannot load the client certificate and key ({cert}, {key or 'same file'}): {exc}",
            )


def _parse_request(p: _Parser, data: Any, path: str) -> RequestSpec | None:
    d = p.section(data, path, {"method", "url", "headers", "json", "form"})
    if not d:
        p.error(path, "must be a mapping with at least url")
        return None
    method = p.string(d, "method", path, "POST").upper()
    url = p.value(d, "url", path, _http_url, _MISSING)
    headers = p.resolve(d.get("headers") or {}, f"{path}.headers")
    if not isinstance(headers, dict):
        p.error(f"{path}.headers", "must be a mapping")
        headers = {}
    body_json = p.resolve(d.get("json"), f"{path}.json")
    form = p.resolve(d.get("form"), f"{path}.form")
    if form is not None and not isinstance(form, dict):
        p.error(f"{path}.form", "must be a mapping of field names to values")
        form = None
    if body_json is not None and form is not None:
        p.error(path, "give json or form, not both")
    if url is None:
        return None
    return RequestSpec(
        method=method,
        url=url,
        headers={str(k): str(v) for k, v in headers.items()},
        json=body_json,
        form={str(k): "" if v is None else str(v) for k, v in form.items()} if form else None,
    )


def _parse_response(p: _Parser, data: Any, path: str) -> ResponseSpec:
    keys = {f.name for f in ResponseSpec.__dataclass_fields__.values()}
    d = p.section(data, path, keys)
    spec = ResponseSpec(**{k: p.string(d, k, path, None) for k in keys if k in d})
    if not spec.access_token:
        p.error(f"{path}.access_token", "is required")
    if spec.expires_at and spec.expires_in:
        p.error(path, "give expires_at or expires_in, not both")
    return spec


def _parse_auth(p: _Parser, data: Any, path: str) -> tuple[AuthConfig | None, str | None, Any]:
    """Returns (auth, preset name, the preset's default upstream)."""
    if not isinstance(data, dict):
        p.error(path, "must be a mapping with a type (or a preset)")
        return None, None, None
    if "preset" in data:
        from proxy.config.presets import PRESETS, expand

        name = data["preset"]
        if not isinstance(name, str) or name not in PRESETS:
            p.error(f"{path}.preset", f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
            return None, str(name), None
        params = {k: v for k, v in data.items() if k != "preset"}
        p.section(params, path, set(PRESETS[name].params))
        resolved = p.resolve(params, path)
        try:
            expanded, upstream = expand(name, resolved)
        except KeyError as exc:
            p.error(f"{path}.{exc.args[0]}", f"is required by preset {name}")
            return None, name, None
        auth, _, _ = _parse_auth(p, expanded, path)
        return auth, name, upstream

    kind = data.get("type")
    if kind == "none":
        p.section(data, path, {"type"})
        return NoAuth(), None, None
    if kind == "static":
        d = p.section(data, path, {"type", "header", "value"})
        return (
            StaticAuth(
                header=p.value(d, "header", path, _header_name, "Authorization"),
                value=p.value(d, "value", path, _header_value, _MISSING) or "",
            ),
            None,
            None,
        )
    if kind == "oauth2_client_credentials":
        d = p.section(
            data,
            path,
            {
                "type", "token_url", "client_id", "client_secret", "scope", "audience",
                "extra", "body", "client_auth", "default_ttl", *COMMON,
            },
        )  # fmt: skip
        extra = p.resolve(d.get("extra") or {}, f"{path}.extra")
        std = oauth_keys(p, d, path, kind)
        return (
            ClientCredentialsAuth(
                token_url=p.value(d, "token_url", path, _http_url, _token_url(std)) or "",
                client_id=p.string(d, "client_id", path) or "",
                client_secret=p.string(d, "client_secret", path, _secret(std)) or "",
                scope=p.value(d, "scope", path, _scope, None),
                audience=p.string(d, "audience", path, None),
                extra=extra if isinstance(extra, dict) else {},
                body=p.choice(d, "body", path, ("form", "json"), "form"),
                default_ttl=p.duration(d, "default_ttl", path, 300.0),
                **std,
            ),
            None,
            None,
        )
    if kind == "oauth2_refresh_token":
        d = p.section(
            data,
            path,
            {
                "type", "token_url", "client_id", "client_secret", "refresh_token",
                "authorize_url", "redirect_uri", "scope", "pkce", "extra", "client_auth",
                "default_ttl", "authorize_params", *COMMON,
            },
        )  # fmt: skip
        extra = p.resolve(d.get("extra") or {}, f"{path}.extra")
        std = oauth_keys(p, d, path, kind)
        return (
            RefreshTokenAuth(
                token_url=p.value(d, "token_url", path, _http_url, _token_url(std)) or "",
                client_id=p.string(d, "client_id", path) or "",
                client_secret=p.string(d, "client_secret", path, _secret(std)) or "",
                refresh_token=p.string(d, "refresh_token", path, None) or None,
                authorize_url=p.value(d, "authorize_url", path, _http_url, None),
                redirect_uri=p.value(d, "redirect_uri", path, _http_url, None),
                scope=p.value(d, "scope", path, _scope, None),
                pkce=p.boolean(d, "pkce", path, False),
                extra=extra if isinstance(extra, dict) else {},
                default_ttl=p.duration(d, "default_ttl", path, 300.0),
                **std,
            ),
            None,
            None,
        )
    if kind == "oauth2_jwt_bearer":
        return _parse_jwt_bearer(p, data, path), None, None
    if kind == "login":
        d = p.section(data, path, {"type", "request", "response", "refresh", "default_ttl"})
        request = _parse_request(p, d.get("request"), f"{path}.request")
        response = _parse_response(p, d.get("response") or {}, f"{path}.response")
        refresh = refresh_response = None
        if d.get("refresh") is not None:
            rd = d["refresh"]
            if isinstance(rd, dict) and "response" in rd:
                refresh_response = _parse_response(p, rd["response"], f"{path}.refresh.response")
                rd = {k: v for k, v in rd.items() if k != "response"}
            refresh = _parse_request(p, rd, f"{path}.refresh")
        if request is None:
            return None, None, None
        return (
            LoginAuth(
                request=request,
                response=response,
                refresh=refresh,
                refresh_response=refresh_response,
                default_ttl=p.duration(d, "default_ttl", path, 300.0),
            ),
            None,
            None,
        )
    known = (
        "none, static, oauth2_client_credentials, oauth2_refresh_token, oauth2_jwt_bearer, login"
    )
    if kind is None:
        p.error(f"{path}.type", f"is required (one of {known}), or give a preset")
    else:
        p.error(f"{path}.type", f"unknown auth type {kind!r}; one of {known}")
    return None, None, None


def _token_url(std: dict[str, Any]) -> Any:
    # Discovery (issuer/discovery_url) brings the token endpoint; else it is required.
    return "" if std.get("issuer") or std.get("discovery_url") else _MISSING


def _secret(std: dict[str, Any]) -> Any:
    # Clients that do not authenticate with a secret need none.
    no_secret = ("none", "private_key_jwt", "tls_client_auth")
    return "" if std.get("client_auth") in no_secret else _MISSING


def _parse_jwt_bearer(p: _Parser, data: dict[str, Any], path: str) -> JwtBearerAuth:
    keys = {"type", "token_url", "claims", "scope", "extra", "client_id", "client_secret"}
    d = p.section(data, path, keys | COMMON | {"default_ttl", "assertion_ttl"})
    std = oauth_keys(p, d, path, "oauth2_jwt_bearer")
    if "client_auth" not in d:
        std["client_auth"] = "none" if "client_secret" not in d else "body"
    extra = p.resolve(d.get("extra") or {}, f"{path}.extra")
    return JwtBearerAuth(
        token_url=p.value(d, "token_url", path, _http_url, _token_url(std)) or "",
        scope=p.value(d, "scope", path, _scope, None),
        extra=extra if isinstance(extra, dict) else {},
        client_id=p.string(d, "client_id", path, ""),
        client_secret=p.string(d, "client_secret", path, ""),
        default_ttl=p.duration(d, "default_ttl", path, 300.0),
        **std,
    )


def _parse_route(
    p: _Parser, name: str, data: Any, path: str, defaults: dict[str, Any], limits: Limits
) -> RouteConfig | None:
    d = p.section(data, path, ROUTE_KEYS)
    if not isinstance(data, dict):
        if data is None:  # `api:` with nothing under it must not silently drop the route
            p.error(path, "is empty: a route needs at least upstream and auth")
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        p.error(path, "route names may use only letters, digits, '_', '-' and '.'")
    prefix = p.string(d, "prefix", path, f"/{name}/")
    if not prefix.startswith("/"):
        p.error(f"{path}.prefix", "must start with /")
    if not prefix.endswith("/"):
        prefix += "/"
    if any(seg in ("..", ".") for seg in prefix.split("/")) or "%" in prefix or "?" in prefix:
        p.error(f"{path}.prefix", "must be a plain path without '..', '%' or '?'")

    auth, preset, preset_upstream = _parse_auth(p, d.get("auth"), f"{path}.auth")
    if "auth" not in d:
        p.error(f"{path}.auth", "is required (use {type: none} for no authentication)")
    # A preset that failed to expand has said why already; don't also ask for upstream.
    fallback = preset_upstream or (None if preset else _MISSING)
    upstream = p.value(d, "upstream", path, _http_url, fallback)
    if upstream:
        u = URL(upstream)
        if u.query_string or u.fragment:
            p.error(f"{path}.upstream", "must not carry a query or fragment")
        if not upstream.endswith("/"):
            upstream += "/"

    ind = p.section(d.get("inject"), f"{path}.inject", {"header", "format"})
    inject = InjectConfig(
        header=p.value(ind, "header", f"{path}.inject", _header_name, "Authorization"),
        format=p.string(ind, "format", f"{path}.inject", "Bearer {access_token}"),
    )
    if "{access_token}" not in inject.format:
        p.error(f"{path}.inject.format", "must contain {access_token}")

    tls = _parse_tls(p, d.get("tls"), f"{path}.tls")
    if getattr(auth, "client_auth", None) == "tls_client_auth" and not tls.client_cert:
        p.error(f"{path}.auth.client_auth", "tls_client_auth needs the route's tls.client_cert")

    def pick(key: str, getter: Callable[..., Any]) -> Any:
        if key in d:
            return getter(d, key, path, defaults[key])
        return defaults[key]

    return RouteConfig(
        name=name,
        prefix=prefix,
        upstream=upstream or "",
        auth=auth or NoAuth(),
        inject=inject,
        pass_client_authorization=p.boolean(d, "pass_client_authorization", path, False),
        tls=tls,
        refresh_before=pick("refresh_before", p.duration),
        connect_timeout=pick("connect_timeout", p.duration),
        timeout=pick("timeout", p.duration),
        read_timeout=pick("read_timeout", p.duration),
        body_timeout=pick("body_timeout", p.duration),
        token_timeout=pick("token_timeout", p.duration),
        retry_on_401=pick("retry_on_401", p.boolean),
        max_replay_body=pick("max_replay_body", p.size),
        egress_proxy=pick("egress_proxy", p.egress),
        refused_cooldown=pick("refused_cooldown", p.duration),
        backoff_cap=pick("backoff_cap", p.duration),
        max_body=p.size(d, "max_body", path, limits.max_body),
        max_concurrent=p.value(d, "max_concurrent", path, _positive_int, limits.max_concurrent),
        preset=preset,
    )


def parse(text: str, environ: Mapping[str, str] | None = None, source: str = "config") -> Config:
    """Parse a YAML document into a :class:`Config`, or raise :class:`ConfigError`."""
    problems: list[Problem] = []
    loader = _Loader(text, problems)
    if problems:
        raise ConfigError(problems, source)
    p = _Parser(loader, os.environ if environ is None else environ)
    top = p.section(loader.root, "", TOP_KEYS)
    allow_empty = top.get("allow_empty_secrets") or []
    if not isinstance(allow_empty, list) or not all(isinstance(k, str) for k in allow_empty):
        p.error("allow_empty_secrets", "must be a list of key paths")
    else:
        p.allow_empty = set(allow_empty)
    if loader.root is None:
        p.error("", "the file is empty; it needs at least routes")
    elif not isinstance(loader.root, dict):
        p.error("", "the top level must be a mapping")

    listen = p.value(top, "listen", "", parse_listen, Listen("127.0.0.1", 8080))
    admin: Listen | None = None
    if top.get("admin_listen") is not False:  # `admin_listen: false` turns it off
        admin = p.value(top, "admin_listen", "", parse_listen, Listen("127.0.0.1", 9090))

    if listen is not None and admin is not None and _same_address(listen, admin):
        p.error("admin_listen", f"{admin} is also `listen`: the admin port needs its own address")

    store = parse_token_store(
        p,
        top.get("token_store"),
        secret=lambda v: Secret(_as_str(v)),
        fernet_key=_fernet_key,
        parse_tls=_parse_tls,
        lease=15.0,
    )

    lim = p.section(top.get("limits"), "limits", {f for f in Limits.__dataclass_fields__})
    limits = Limits(
        max_body=p.size(lim, "max_body", "limits", Limits.max_body),
        max_header_size=p.size(lim, "max_header_size", "limits", Limits.max_header_size),
        max_concurrent=p.value(
            lim, "max_concurrent", "limits", _positive_int, Limits.max_concurrent
        ),
        idle_timeout=p.duration(lim, "idle_timeout", "limits", Limits.idle_timeout),
        backlog=p.value(lim, "backlog", "limits", _positive_int, Limits.backlog),
        max_replay_total=p.size(lim, "max_replay_total", "limits", Limits.max_replay_total),
    )

    dd = p.section(top.get("defaults"), "defaults", DEFAULT_KEYS)
    base = RouteConfig("", "/", "", NoAuth())
    defaults: dict[str, Any] = {
        "refresh_before": p.duration(dd, "refresh_before", "defaults", base.refresh_before),
        "connect_timeout": p.duration(dd, "connect_timeout", "defaults", base.connect_timeout),
        "timeout": p.duration(dd, "timeout", "defaults", base.timeout),
        "read_timeout": p.duration(dd, "read_timeout", "defaults", base.read_timeout),
        "body_timeout": p.duration(dd, "body_timeout", "defaults", base.body_timeout),
        "token_timeout": p.duration(dd, "token_timeout", "defaults", base.token_timeout),
        "retry_on_401": p.boolean(dd, "retry_on_401", "defaults", base.retry_on_401),
        "max_replay_body": p.size(dd, "max_replay_body", "defaults", base.max_replay_body),
        "egress_proxy": p.egress(dd, "egress_proxy", "defaults", None),
        "refused_cooldown": p.duration(dd, "refused_cooldown", "defaults", base.refused_cooldown),
        "backoff_cap": p.duration(dd, "backoff_cap", "defaults", base.backoff_cap),
    }

    routes: list[RouteConfig] = []
    raw_routes = top.get("routes")
    if not raw_routes:
        if loader.root is not None:
            p.error("routes", "at least one route is required")
    elif not isinstance(raw_routes, dict):
        p.error("routes", "must be a mapping of route names to routes")
    else:
        for name, data in raw_routes.items():
            r = _parse_route(p, str(name), data, f"routes.{name}", defaults, limits)
            if r is not None:
                routes.append(r)
    raw_store = top.get("token_store")
    if not (isinstance(raw_store, dict) and "lock_lease" in raw_store):
        store = replace(store, lock_lease=lease_for([r.token_timeout for r in routes]))
    seen: dict[str, str] = {}
    for r in routes:
        if r.prefix in seen:
            p.error(f"routes.{r.name}.prefix", f"{r.prefix} is also the prefix of {seen[r.prefix]}")
        seen[r.prefix] = r.name

    require = _require_tokens(p, top.get("readiness"), routes)

    allow_raw = top.get("allow_from") or []
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    if not isinstance(allow_raw, list):
        p.error("allow_from", "must be a list of CIDRs")
    else:
        for i, item in enumerate(allow_raw):
            try:
                allow.append(ipaddress.ip_network(str(item), strict=False))
            except ValueError:
                p.error(f"allow_from[{i}]", f"{item!r} is not an IP network (CIDR)")
    inbound = p.value(top, "inbound_token", "", lambda v: Secret(_as_str(v)), None)
    if inbound is not None and len(inbound) < 16:
        p.error("inbound_token", "is too short to be a secret (16 characters or more)")
    insecure = p.boolean(top, "insecure_allow_any", "", False)
    if listen is not None and not listen.is_loopback and not (allow or inbound or insecure):
        p.error(
            "listen",
            f"{listen} is beyond loopback: set allow_from, inbound_token, "
            "or insecure_allow_any: true",
        )

    def mode(v: Any) -> int:
        m = int(str(v), 8) if not isinstance(v, int) else v
        if not 0 <= m <= 0o777:
            raise ValueError("must be a file mode such as 0660")
        return m

    if not problems:  # only a config otherwise valid is worth a network round trip
        from proxy.tokens.discovery import discover

        routes = discover(routes, p.error)
    config = Config(
        routes=tuple(routes),
        listen=listen,
        admin_listen=admin,
        token_store=store,
        allow_from=tuple(allow),
        inbound_token=inbound,
        insecure_allow_any=insecure,
        unix_socket_mode=p.value(top, "unix_socket_mode", "", mode, 0o660),
        shutdown_grace=p.duration(top, "shutdown_grace", "", 20.0),
        limits=limits,
        require_tokens=require,
        sources=tuple(dict.fromkeys(p.files)),
    )
    if problems:
        problems.sort(key=lambda pr: pr.line or 0)
        raise ConfigError(problems, source)
    return config


def _same_address(a: Listen, b: Listen) -> bool:
    """Two listeners that cannot both bind (port 0 means "any free one": never equal)."""
    if a.path is not None or b.path is not None:
        return a.path == b.path
    wildcard = ("0.0.0.0", "::", "")
    return a.port == b.port != 0 and (a.host == b.host or a.host in wildcard or b.host in wildcard)


def _require_tokens(p: _Parser, data: Any, routes: list[RouteConfig]) -> tuple[str, ...]:
    """``readiness: {require_tokens: [route, ...]}``: each a route that uses a token."""
    section = p.section(data, "readiness", {"require_tokens"})
    names = section.get("require_tokens")
    if names is None:
        return ()
    if not isinstance(names, list):
        p.error("readiness.require_tokens", "must be a list of route names")
        return ()
    by_name = {r.name: r for r in routes}
    out: list[str] = []
    for i, name in enumerate(names):
        r = by_name.get(str(name))
        if r is None:
            known = ", ".join(sorted(by_name)) or "none"
            p.error(f"readiness.require_tokens[{i}]", f"{name!r} is not a route (routes: {known})")
        elif isinstance(r.auth, NoAuth) or r.auth.type in ("static", "none"):
            p.error(f"readiness.require_tokens[{i}]", f"route {name!r} uses no token")
        else:
            out.append(r.name)
    return tuple(out)


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
    return _with_sources(config, (os.path.abspath(path), *config.sources))


def _with_sources(config: Config, sources: tuple[str, ...]) -> Config:
    from dataclasses import replace

    return replace(config, sources=sources)


def default_path(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("AUTHPROXY_CONFIG") or "config.yaml"
