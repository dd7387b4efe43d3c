"""The ``token_store`` section: parsed and checked once, like the rest of the config.

Kept apart from the other sections (:mod:`proxy.config.schema`) because a Redis
store has many ways to be configured wrongly (URL tricks, Sentinel, Cluster, TLS,
credentials) and each must be a config error that names its key path, never a 500
on every request later.

- Credentials are keys (``username``, ``password``, which take ``${file:}``), not
  URL tricks. A password written literally in ``url`` is moved into ``password``,
  so that ``check --explain`` shows the URL with the password masked.
- ``url`` query parameters are limited to those that cannot break the store's
  own guarantees: ``db``, ``protocol``, ``client_name``, and ``socket_timeout`` /
  ``socket_connect_timeout`` up to the call bound (:data:`CALL_BOUND`).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

import proxy.config.fields as fields
from proxy.config.model import SentinelConfig, TokenStoreConfig
from proxy.config.reader import Data, Reader, build
from proxy.config.tls import parse_tls
from proxy.config.values import Secret

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
_WHERE = "token_store.url"
#: a URL's query options, as ``(key, value)`` pairs
Options = tuple[tuple[str, str], ...]


def lease_for(token_timeouts: list[float]) -> float:
    """The default lock lease: the longest ``token_timeout``, within 3-15 s.

    A holder renews its lease every third of it while its fetch runs, so the
    lease need not cover the fetch; it bounds what a holder that died costs the
    others. Sized like this, a dead holder costs no more than a slow token
    endpoint would. Below 3 s a renewal (bounded by two call bounds) could miss.
    """
    longest = max(token_timeouts, default=10.0)
    return min(15.0, max(3.0, longest))


def parse_token_store(r: Reader, data: object) -> TokenStoreConfig:
    """``token_store`` as typed values; every problem reported through ``r``."""
    path = "token_store"
    ts = r.section(data, path, fields.key_names(TokenStoreConfig))
    values = r.read(TokenStoreConfig, ts, path)
    url = r.text(ts, "url", path, None)
    values["url"], values["options"] = url, ()
    if url is not None and values["type"] == "redis":
        _take_url(r, values, url)
    values["tls"] = parse_tls(r, ts["tls"], f"{path}.tls") if ts.get("tls") is not None else None
    raw = ts.get("sentinel")
    values["sentinel"] = _sentinel(r, raw) if raw is not None else None
    store = build(TokenStoreConfig, values)
    _check(r, store, ts)
    return store


def _take_url(r: Reader, values: Data, url: str) -> None:
    """A Redis URL's credentials move into ``username``/``password``; its query into
    ``options``."""
    parsed = _check_url(r, url)
    if parsed is None:
        return
    values["url"], url_user, url_password, values["options"] = parsed
    if url_password is not None:
        if values["password"] is not None:
            r.error(_WHERE, "has a password, and token_store.password is set too")
        values["password"] = Secret(url_password)
    if url_user and values["username"] is None:
        values["username"] = url_user


def _check(r: Reader, store: TokenStoreConfig, ts: Data) -> None:
    path = "token_store"
    if store.type == "file" and not store.path:
        r.error(f"{path}.path", "is required for a file store")
    if store.type == "redis":
        if not store.url and store.sentinel is None:
            r.error(f"{path}.url", "is required for a redis store (or token_store.sentinel)")
        if store.url and store.sentinel is not None:
            r.error(f"{path}.sentinel", "and token_store.url exclude each other")
        if store.sentinel is not None and store.cluster:
            r.error(f"{path}.cluster", "and token_store.sentinel exclude each other")
        if store.cluster and dict(store.options).get("db", "0") != "0":
            r.error(f"{path}.url", "a Redis Cluster has only database 0")
    else:
        for key in ("url", "username", "password", "tls", "sentinel", "cluster"):
            if key in ts:
                r.error(f"{path}.{key}", f"applies to type redis only (type is {store.type})")
    if store.lock_lease is not None and store.lock_lease < 1.0 and "lock_lease" in ts:
        r.error(f"{path}.lock_lease", "must be 1s or more")


def _check_url(r: Reader, url: str) -> tuple[str, str | None, str | None, Options] | None:
    """``(url without password, username, password, query options)``, or None after
    reporting why the URL cannot be used."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        r.error(_WHERE, "must start with redis://, rediss:// or unix://")
        return None
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        userinfo, _, hostpart = rest.rpartition("@")
        if "/" in userinfo or "@" in userinfo:
            # `redis://:pa/ss@host` makes a host named `ss` elsewhere: say what it is.
            r.error(
                _WHERE,
                "the user or password contains '/' or '@': percent-encode it (%2F, %40), "
                "or better, move it to token_store.password",
            )
            return None
        name, colon, pw = userinfo.partition(":")
        user = unquote(name) or None
        password = unquote(pw) if colon and pw else None
        rest = f"{name}@{hostpart}" if name else hostpart
    options = _options(r, query)
    if scheme != "unix":
        found = _database(r, rest)
        if found is None:
            return None
        if found:
            options = [o for o in options if o[0] != "db"] + [("db", found)]
    return f"{scheme}://{rest}", user, password, tuple(options)


def _database(r: Reader, rest: str) -> str | None:
    """The database number in the URL's path ("" if none), or None after an error."""
    hostport = rest.partition("/")[0].rpartition("@")[2]
    db = rest.partition("/")[2]
    if not hostport or hostport.startswith(":"):
        r.error(_WHERE, "has no host")
        return None
    if db and not db.isdigit():
        r.error(_WHERE, f"the path must be a database number, got /{db}")
        return None
    return db


def _options(r: Reader, query: str) -> list[tuple[str, str]]:
    options: list[tuple[str, str]] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        problem = _option_problem(key, value)
        if problem:
            r.error(_WHERE, problem)
        else:
            options.append((key, value))
    return options


def _option_problem(key: str, value: str) -> str | None:
    if key not in _QUERY_ALLOWED:
        hint = _QUERY_HINTS.get(key) or (
            "use token_store.tls" if key.startswith("ssl") else f"allowed: {_allowed()}"
        )
        return f"unknown query parameter {key!r}; {hint}"
    if key in ("socket_timeout", "socket_connect_timeout"):
        try:
            seconds = float(value)
        except ValueError:
            return f"{key} must be a number of seconds, got {value!r}"
        if not 0 < seconds <= CALL_BOUND:
            return (
                f"{key}={value} is above the store's call bound ({CALL_BOUND:g}s): every "
                "Redis call is bounded so that an outage cannot stall requests"
            )
    if key == "db" and not value.isdigit():
        return f"db must be a number, got {value!r}"
    return None


def _allowed() -> str:
    return ", ".join(sorted(_QUERY_ALLOWED))


def _sentinel(r: Reader, data: object) -> SentinelConfig | None:
    path = "token_store.sentinel"
    d = r.section(data, path, fields.key_names(SentinelConfig))
    values = r.read(SentinelConfig, d, path)
    raw = d.get("sentinels")
    nodes: list[tuple[str, int]] = []
    if not isinstance(raw, list) or not raw:
        r.error(f"{path}.sentinels", "must be a list of host:port, one or more")
    else:
        for i, item in enumerate(raw):
            m = _HOST_PORT.match(str(item))
            if m is None or not 0 < int(m.group(2)) < 65536:
                r.error(f"{path}.sentinels[{i}]", f"must be host:port, got {item!r}")
                continue
            nodes.append((m.group(1).strip("[]"), int(m.group(2))))
    if not values["master_name"] or not nodes:
        return None
    values["sentinels"] = tuple(nodes)
    return build(SentinelConfig, values)
