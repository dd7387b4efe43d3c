"""Redis as platform teams run it, from the Debian packages, for the store tests.

- :class:`Node`: one ``redis-server`` with any extra options, on a free port in
  its own temporary directory; pausable (SIGSTOP/SIGCONT) and killable.
- :func:`sentinel_set`: a master, a replica and three ``redis-sentinel`` processes
  watching it (down-after 1 s), so that killing the master fails over in seconds.
- :func:`cluster`: three masters with ``cluster-enabled yes``, joined by
  ``redis-cli --cluster create``.
- :func:`tls_node`: a TLS-only server with trustme certificates (client
  certificates optional or required).

Each fixture stops what it started in teardown. Import them into a test module::

    from tests.redis_topologies import cluster, sentinel_set, tls_node  # noqa: F401
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis

from tests.redis_fixture import free_port


def _need(command: str, package: str) -> None:
    if shutil.which(command) is None:
        pytest.fail(f"{command} is not installed (Debian package {package})")


class Node:
    """One redis-server (or redis-sentinel, with ``sentinel=True``)."""

    def __init__(
        self,
        directory: Path,
        *extra: str,
        sentinel: bool = False,
        tls: dict[str, str] | None = None,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.extra = extra
        self.sentinel = sentinel
        self.tls = tls
        #: what the fixture's own client presents (TLS): ca, cert, key
        self.client_tls: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.sentinel:
            conf = self.dir / "sentinel.conf"
            conf.write_text(
                f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                + "".join(f"{line}\n" for line in self.extra)
            )
            argv = ["redis-sentinel", str(conf)]
        else:
            port_args = ["--port", str(self.port)]
            if self.tls is not None:
                port_args = ["--port", "0", "--tls-port", str(self.port)]
                for k, v in self.tls.items():
                    port_args += [f"--{k}", v]
            argv = [
                "redis-server", *port_args,
                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--protected-mode", "no",
                "--logfile", str(self.dir / "redis.log"), "--loglevel", "notice",
                *self.extra,
            ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{argv[0]} did not start on port {self.port}")

    def client(self, **kwargs: Any) -> syncredis.Redis:
        if self.tls is not None:
            kwargs.setdefault("ssl", True)
            kwargs.setdefault("ssl_ca_certs", self.tls["tls-ca-cert-file"])
            for k, v in self.client_tls.items():
                kwargs.setdefault(k, v)
        return syncredis.Redis(port=self.port, socket_timeout=2, **kwargs)

    def ping(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except (syncredis.RedisError, OSError):
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def _wait(cond: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except (syncredis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class SentinelSet:
    master: Node
    replica: Node
    sentinels: list[Node] = field(default_factory=list)
    name: str = "authproxy-test"

    def master_port(self) -> int:
        with self.sentinels[0].client() as c:
            _host, port = c.sentinel_get_master_addr_by_name(self.name)
            return int(port)


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    _need("redis-sentinel", "redis-sentinel")
    with make_sentinel_set(tmp_path) as s:
        yield s


@contextlib.contextmanager
def make_sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    master = Node(tmp_path / "master")
    nodes: list[Node] = [master]
    try:
        master.start()
        replica = Node(tmp_path / "replica", "--replicaof", "127.0.0.1", str(master.port))
        nodes.append(replica)
        replica.start()

        def synced() -> bool:
            with replica.client() as c:
                return bool(c.info("replication")["master_link_status"] == "up")

        _wait(synced, "the replica to sync")
        s = SentinelSet(master, replica)
        for i in range(3):
            node = Node(
                tmp_path / f"sentinel{i}",
                f"sentinel monitor {s.name} 127.0.0.1 {master.port} 2",
                f"sentinel down-after-milliseconds {s.name} 1000",
                f"sentinel failover-timeout {s.name} 4000",
                f"sentinel parallel-syncs {s.name} 1",
                sentinel=True,
            )
            nodes.append(node)
            node.start()
            s.sentinels.append(node)

        def ready() -> bool:
            for node in s.sentinels:
                with node.client() as c:
                    m = c.sentinel_master(s.name)
                    if int(m["num-slaves"]) < 1 or int(m["num-other-sentinels"]) < 2:
                        return False
            return True

        _wait(ready, "the sentinels to see the replica and each other", timeout=30)
        yield s
    finally:
        for node in reversed(nodes):
            node.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[Node]]:
    """Three masters, all slots covered; shared by a module's tests (FLUSHALL them)."""
    _need("redis-cli", "redis-tools")
    with make_cluster() as nodes:
        yield nodes


@contextlib.contextmanager
def make_cluster() -> Iterator[list[Node]]:
    with tempfile.TemporaryDirectory(prefix="authproxy-cluster-") as tmp:
        nodes = [
            Node(
                Path(tmp) / f"n{i}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"{tmp}/n{i}/nodes.conf",
                "--cluster-node-timeout",
                "2000",
                # explicit: the default (port + 10000) does not fit above port 55535
                "--cluster-port",
                str(free_port()),
            )
            for i in range(3)
        ]
        try:
            for n in nodes:
                n.start()
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
            )  # fmt: skip

            def ok() -> bool:
                for n in nodes:
                    with n.client() as c:
                        info = c.execute_command("CLUSTER INFO")
                        if isinstance(info, bytes):
                            info = dict(x.split(":", 1) for x in info.decode().split())
                        if info.get("cluster_state") != "ok":
                            return False
                return True

            _wait(ok, "the cluster to be ok")
            yield nodes
        finally:
            for n in nodes:
                n.stop()


@dataclass
class TLSFiles:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


@pytest.fixture(scope="module")
def tls_node() -> Iterator[tuple[Node, TLSFiles]]:
    """A TLS-only redis-server that requires a client certificate (mTLS)."""
    with make_tls_node() as made:
        yield made


@contextlib.contextmanager
def make_tls_node() -> Iterator[tuple[Node, TLSFiles]]:
    import trustme

    with tempfile.TemporaryDirectory(prefix="authproxy-redis-tls-") as tmp:
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("authproxy-client")
        files = TLSFiles(*(f"{tmp}/{n}.pem" for n in ("ca", "scert", "skey", "ccert", "ckey")))
        ca.cert_pem.write_to_path(files.ca)
        server.cert_chain_pems[0].write_to_path(files.server_cert)
        server.private_key_pem.write_to_path(files.server_key)
        client.cert_chain_pems[0].write_to_path(files.client_cert)
        client.private_key_pem.write_to_path(files.client_key)
        node = Node(
            Path(tmp) / "node",
            tls={
                "tls-cert-file": files.server_cert,
                "tls-key-file": files.server_key,
                "tls-ca-cert-file": files.ca,
                "tls-auth-clients": "yes",
            },
        )
        node.client_tls = {"ssl_certfile": files.client_cert, "ssl_keyfile": files.client_key}
        try:
            node.start()
            yield node, files
        finally:
            node.stop()
