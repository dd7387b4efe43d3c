"""The ``token_store`` section: parsed and checked once, like the rest of the config.

Kept apart from :mod:`proxy.config.model` because a Redis store has many ways to be
configured wrongly (URL tricks, Sentinel, Cluster, TLS, credentials) and each must
be a config error that names its key path, never a 500 on every request later.

- Credentials are keys (``username``, ``password``, which take ``${file:}``), not
  URL tricks. A password written literally in ``url`` is moved into ``password``,
  so that ``check --explain`` shows the URL with the password masked.
- ``url`` query parameters are limited to those that cannot break the store's
  own guarantees: ``db``, ``protocol``, ``client_name``, and ``socket_timeout`` /
  ``socket_connect_timeout`` up to the call bound (:data:`CALL_BOUND`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import parse_qsl, unquote

if TYPE_CHECKING:
    from proxy.config.model import TLSConfig

#: the longest one Redis call may take (seconds); see proxy.tokens.stores.redis_store
CALL_BOUND = 1.0

_QUERY_ALLOWED = {"db", "protocol", "client_name", "socket_timeout", "socket_connect_timeout"}
_QUERY_HINTS = {
    "password": "use token_store.password (it takes ${file:...})",
    "username": "use token_store.username",
    "sentinel": "use token_store.sentinel: {master_name, sentinels}",
    "cluster": "use token_store.cluster: true",
}
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class SentinelConfig:
    """Redis Sentinel: the master is found by name, and found again after a failover."""

    master_name: str
    sentinels: tuple[tuple[str, int], ...]
    password: str | None = None
    username: str | None = None


@dataclass(frozen=True)
class TokenStoreConfig:
    type: Literal["memory", "file", "redis"] = "memory"
    path: str | None = None
    url: str | None = None
    encryption_key: str | None = None
    key_prefix: str = "authproxy"
    #: the refresh lock's lease; unset: sized from the routes' token_timeout
    lock_lease: float = 15.0
    username: str | None = None
    password: str | None = None
    tls: TLSConfig | None = None
    sentinel: SentinelConfig | None = None
    cluster: bool = False
    #: from the url's query: socket timeouts (never above CALL_BOUND), db, protocol
    options: tuple[tuple[str, str], ...] = ()


class Parser(Protocol):
    """What this module needs of :class:`proxy.config.model._Parser`."""

    def error(self, path: str, message: str) -> None: ...
    def section(self, data: Any, path: str, allowed: set[str]) -> dict[str, Any]: ...
    def value(
        self, data: dict[str, Any], key: str, path: str, conv: Callable[[Any], Any], default: Any
    ) -> Any: ...
    def string(self, data: dict[str, Any], key: str, path: str, default: Any = ...) -> Any: ...
    def boolean(self, data: dict[str, Any], key: str, path: str, default: bool) -> bool: ...
    def duration(self, data: dict[str, Any], key: str, path: str, default: float) -> float: ...
    def choice(
        self, data: dict[str, Any], key: str, path: str, options: tuple[str, ...], default: str
    ) -> Any: ...


KEYS = {
    "type", "path", "url", "encryption_key", "key_prefix", "lock_lease", "username",
    "password", "tls", "sentinel", "cluster",
}  # fmt: skip


def lease_for(token_timeouts: list[float]) -> float:
    """The default lock lease: the longest ``token_timeout``, within 3-15 s.

    A holder renews its lease every third of it while its fetch runs, so the
    lease need not cover the fetch; it bounds what a holder that died costs the
    others. Sized like this, a dead holder costs no more than a slow token
    endpoint would. Below 3 s a renewal (bounded by two call bounds) could miss.
    """
    longest = max(token_timeouts, default=10.0)
    return min(15.0, max(3.0, longest))


def parse_token_store(
    p: Parser,
    data: Any,
    *,
    secret: Callable[[Any], Any],
    fernet_key: Callable[[Any], Any],
    parse_tls: Callable[[Any, Any, str], TLSConfig],
    lease: float,
) -> TokenStoreConfig:
    """``token_store`` as typed values; every problem reported through ``p``."""
    path = "token_store"
    ts = p.section(data, path, KEYS)
    kind = p.choice(ts, "type", path, ("memory", "file", "redis"), "memory")
    url = p.string(ts, "url", path, None)
    username = p.string(ts, "username", path, None)
    password = p.value(ts, "password", path, secret, None)
    options: tuple[tuple[str, str], ...] = ()
    if url is not None and kind == "redis":
        parsed = _check_url(p, str(url))
        if parsed is not None:
            url, url_user, url_password, options = parsed
            if url_password is not None:
                if password is not None:
                    p.error(f"{path}.url", "has a password, and token_store.password is set too")
                password = secret(url_password)
            if url_user and username is None:
                username = url_user
    tls = parse_tls(p, ts["tls"], f"{path}.tls") if ts.get("tls") is not None else None
    sentinel = _sentinel(p, ts.get("sentinel"), secret) if ts.get("sentinel") is not None else None
    cluster = p.boolean(ts, "cluster", path, False)
    store = TokenStoreConfig(
        type=kind,
        path=p.string(ts, "path", path, None),
        url=url,
        encryption_key=p.value(ts, "encryption_key", path, fernet_key, None),
        key_prefix=p.string(ts, "key_prefix", path, "authproxy"),
        lock_lease=p.duration(ts, "lock_lease", path, lease),
        username=username,
        password=password,
        tls=tls,
        sentinel=sentinel,
        cluster=cluster,
        options=options,
    )
    if store.type == "file" and not store.path:
        p.error(f"{path}.path", "is required for a file store")
    if store.type == "redis":
        if not store.url and store.sentinel is None:
            p.error(f"{path}.url", "is required for a redis store (or token_store.sentinel)")
        if store.url and store.sentinel is not None:
            p.error(f"{path}.sentinel", "and token_store.url exclude each other")
        if store.sentinel is not None and store.cluster:
            p.error(f"{path}.cluster", "and token_store.sentinel exclude each other")
        if store.cluster and dict(store.options).get("db", "0") != "0":
            p.error(f"{path}.url", "a Redis Cluster has only database 0")
    elif kind != "redis":
        for key in ("url", "username", "password", "tls", "sentinel", "cluster"):
            if key in ts:
                p.error(f"{path}.{key}", f"applies to type redis only (type is {kind})")
    if store.lock_lease < 1.0 and "lock_lease" in ts:
        p.error(f"{path}.lock_lease", "must be 1s or more")
    return store


def _check_url(
    p: Parser, url: str
) -> tuple[str, str | None, str | None, tuple[tuple[str, str], ...]] | None:
    """``(url without password, username, password, query options)``, or None after
    reporting why the URL cannot be used."""
    where = "token_store.url"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        p.error(where, "must start with redis://, rediss:// or unix://")
        return None
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        userinfo, _, hostpart = rest.rpartition("@")
        if "/" in userinfo or "@" in userinfo:
            # `redis://:pa/ss@host` makes a host named `ss` elsewhere: say what it is.
            p.error(
                where,
                "the user or password contains '/' or '@': percent-encode it (%2F, %40), "
                "or better, move it to token_store.password",
            )
            return None
        name, colon, pw = userinfo.partition(":")
        user = unquote(name) or None
        password = unquote(pw) if colon and pw else None
        rest = f"{name}@{hostpart}" if name else hostpart
    options: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in _QUERY_ALLOWED:
            hint = _QUERY_HINTS.get(key) or (
                "use token_store.tls" if key.startswith("ssl") else f"allowed: {_allowed()}"
            )
            p.error(where, f"unknown query parameter {key!r}; {hint}")
            continue
        if key in ("socket_timeout", "socket_connect_timeout"):
            try:
                seconds = float(value)
            except ValueError:
                p.error(where, f"{key} must be a number of seconds, got {value!r}")
                continue
            if not 0 < seconds <= CALL_BOUND:
                p.error(
                    where,
                    f"{key}={value} is above the store's call bound ({CALL_BOUND:g}s): every "
                    "Redis call is bounded so that an outage cannot stall requests",
                )
                continue
        if key == "db" and not value.isdigit():
            p.error(where, f"db must be a number, got {value!r}")
            continue
        options.append((key, value))
    if scheme != "unix":
        hostport = rest.partition("/")[0].rpartition("@")[2]
        db = rest.partition("/")[2]
        if not hostport or hostport.startswith(":"):
            p.error(where, "has no host")
            return None
        if db and not db.isdigit():
            p.error(where, f"the path must be a database number, got /{db}")
            return None
        if db:
            options = [o for o in options if o[0] != "db"] + [("db", db)]
    clean = f"{scheme}://{rest}"
    return clean, user, password, tuple(options)


def _allowed() -> str:
    return ", ".join(sorted(_QUERY_ALLOWED))


def _sentinel(p: Parser, data: Any, secret: Callable[[Any], Any]) -> SentinelConfig | None:
    path = "token_store.sentinel"
    d = p.section(data, path, {"master_name", "sentinels", "password", "username"})
    name = p.string(d, "master_name", path)
    raw = d.get("sentinels")
    nodes: list[tuple[str, int]] = []
    if not isinstance(raw, list) or not raw:
        p.error(f"{path}.sentinels", "must be a list of host:port, one or more")
    else:
        for i, item in enumerate(raw):
            m = _HOST_PORT.match(str(item))
            if m is None or not 0 < int(m.group(2)) < 65536:
                p.error(f"{path}.sentinels[{i}]", f"must be host:port, got {item!r}")
                continue
            nodes.append((m.group(1).strip("[]"), int(m.group(2))))
    password = p.value(d, "password", path, secret, None)
    username = p.string(d, "username", path, None)
    if not name or not nodes:
        return None
    return SentinelConfig(str(name), tuple(nodes), password, username)
