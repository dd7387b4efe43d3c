"""Which Redis, and how to reach it: a plain server, a Sentinel set, or a Cluster.

:func:`build_client` turns ``token_store`` into one redis-py asyncio client with
the store's bounds (socket timeouts at the call bound, one quick retry), TLS and
credentials as keys. :func:`name_error` turns what Redis answered into words an
operator can act on, naming MOVED, READONLY, NOPERM and a wrong password as
themselves rather than calling everything "unreachable".

- **Sentinel**: :class:`redis.asyncio.sentinel.Sentinel` finds the master by name.
  A connection to a demoted master gets READONLY, which redis-py turns into a
  disconnect and a ``ConnectionError``: the next call asks the sentinels again.
- **Cluster**: :class:`redis.asyncio.cluster.RedisCluster` follows MOVED itself;
  the store hash-tags its keys so that a route's token and lock share a slot.
"""

from __future__ import annotations

import re
from typing import Any

from proxy.config.model import TokenStoreConfig
from proxy.config.store import CALL_BOUND

try:
    import redis.asyncio as aioredis
    from redis import exceptions as rexc
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError:  # pragma: no cover - depends on the installation
    aioredis = None  # type: ignore[assignment]


def _common(cfg: TokenStoreConfig) -> dict[str, Any]:
    opts = dict(cfg.options)
    timeout = float(opts.get("socket_timeout", CALL_BOUND))
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": float(opts.get("socket_connect_timeout", timeout / 2)),
        "health_check_interval": 0,
    }
    if cfg.username:
        kwargs["username"] = str(cfg.username)
    if cfg.password:
        kwargs["password"] = str(cfg.password)
    if "protocol" in opts:
        kwargs["protocol"] = int(opts["protocol"])
    if "client_name" in opts:
        kwargs["client_name"] = opts["client_name"]
    kwargs.update(_tls(cfg))
    return kwargs


def uses_tls(cfg: TokenStoreConfig) -> bool:
    return cfg.tls is not None or (cfg.url or "").startswith("rediss://")


def _tls(cfg: TokenStoreConfig) -> dict[str, Any]:
    if not uses_tls(cfg):
        return {}
    tls = cfg.tls
    out: dict[str, Any] = {"ssl": True}
    if tls is None:
        return out
    if not tls.verify:
        out.update(ssl_cert_reqs="none", ssl_check_hostname=False)
    else:
        out.update(ssl_cert_reqs="required", ssl_check_hostname=True)
    if tls.ca_file:
        out["ssl_ca_certs"] = tls.ca_file
    if tls.client_cert:
        out["ssl_certfile"] = tls.client_cert
        out["ssl_keyfile"] = tls.client_key or tls.client_cert
    return out


def _host_port_db(cfg: TokenStoreConfig) -> dict[str, Any]:
    """host/port/db (or the unix path) from ``url``, which has no password any more."""
    from yarl import URL

    u = URL(cfg.url or "")
    db = int(dict(cfg.options).get("db", "0"))
    if u.scheme == "unix":
        return {"unix_socket_path": u.path, "db": db}
    return {"host": u.host or "127.0.0.1", "port": u.port or 6379, "db": db}


def build_client(cfg: TokenStoreConfig) -> Any:
    """The redis-py asyncio client for ``cfg`` (a Redis, or a RedisCluster)."""
    kwargs = _common(cfg)
    if cfg.sentinel is not None:
        from redis.asyncio.sentinel import Sentinel

        s = cfg.sentinel
        sentinel_kwargs = {k: v for k, v in kwargs.items() if k.startswith(("socket_", "ssl"))}
        if s.password:
            sentinel_kwargs["password"] = str(s.password)
        if s.username:
            sentinel_kwargs["username"] = str(s.username)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(s.sentinels), sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        # One quick retry: after a failover it reconnects to the master the
        # sentinels name now; more would only stretch an outage.
        return sentinel.master_for(s.master_name, retry=Retry(NoBackoff(), 1))
    if cfg.cluster:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        where = _host_port_db(cfg)
        return RedisCluster(
            startup_nodes=[ClusterNode(where["host"], where["port"])],
            cluster_error_retry_attempts=1,
            retry=Retry(NoBackoff(), 1),
            **kwargs,
        )
    return aioredis.Redis(**_host_port_db(cfg), retry=Retry(NoBackoff(), 1), **kwargs)


def where(cfg: TokenStoreConfig) -> str:
    """Where the store is, for logs: never a user or password."""
    if cfg.sentinel is not None:
        first = cfg.sentinel.sentinels[0]
        return f"sentinel {cfg.sentinel.master_name} via {first[0]}:{first[1]}"
    try:
        hp = _host_port_db(cfg)
    except ValueError:
        return "redis"
    if "unix_socket_path" in hp:
        return f"unix:{hp['unix_socket_path']}"
    tail = " (cluster)" if cfg.cluster else f"/{hp['db']}"
    return f"{hp['host']}:{hp['port']}{tail}"


# -- naming what went wrong -------------------------------------------------------------


def error_kind(exc: BaseException) -> str:
    """A short stable name: auth, noperm, moved, readonly, cluster, unreachable, error."""
    if aioredis is None:
        return "error"
    if isinstance(exc, rexc.AuthenticationError | rexc.AuthenticationWrongNumberOfArgsError):
        return "auth"
    if isinstance(exc, rexc.NoPermissionError):
        return "noperm"
    if isinstance(exc, rexc.MovedError | rexc.ClusterCrossSlotError):
        return "moved"
    if isinstance(exc, rexc.ReadOnlyError):
        return "readonly"
    if isinstance(exc, rexc.RedisClusterException | rexc.ClusterDownError):
        return "cluster"
    if isinstance(exc, rexc.ResponseError) and "NOAUTH" in str(exc).upper():
        return "auth"
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | OSError | TimeoutError):
        return "unreachable"
    return "error"


def name_error(exc: BaseException) -> str:
    """What an operator should read: the Redis error named, and what to do.

    Only the error class, its code and our own words: a redis-py message can
    quote the URL, never the password, but say as little as needed.
    """
    kind = error_kind(exc)
    text = str(exc)
    if kind == "auth":
        return "WRONGPASS: Redis refused the username or password (token_store.password)"
    if kind == "noperm":
        command = text.split("'")[1] if text.count("'") >= 2 else "a command"
        return (
            f"NOPERM: the Redis user may not run {command}; give it the command set in "
            "docs/token-stores.md"
        )
    if kind == "moved":
        return (
            "MOVED: this Redis is a cluster node; set token_store.cluster: true"
            if isinstance(exc, rexc.MovedError)
            else "CROSSSLOT: keys of one route are on different slots"
        )
    if kind == "readonly":
        return (
            "READONLY: this Redis is a replica; point token_store.url at the master, "
            "or use token_store.sentinel"
        )
    if kind == "cluster":
        if "not enabled" in text.lower() or "cluster mode" in text.lower():
            return "not a cluster: this Redis has cluster mode off; set token_store.cluster: false"
        return f"cluster error ({type(exc).__name__})"
    if kind == "unreachable":
        low = text.lower()
        if "ssl" in low or "certificate" in low or "tls" in low:
            m = re.search(r"\[SSL: [A-Z_]+\]|alert [a-z ]+|certificate verify failed", text)
            return f"TLS handshake failed ({m.group(0) if m else 'see the TLS settings'})"
        return f"unreachable ({type(exc).__name__})"
    return f"error ({type(exc).__name__})"
