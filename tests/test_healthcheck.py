"""``authproxy healthcheck``: the command Docker's HEALTHCHECK runs, as a real
subprocess, against a real proxy on the admin address its config names, and
against nothing listening."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from proxy import config as configmod
from proxy.app import Proxy, create_app
from tests.redis_fixture import free_port
from tests.storekit import ROOT, env_for

ROUTES = "routes:\n  a: {upstream: 'http://127.0.0.1:9/', auth: {type: none}}\n"


def ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def healthcheck(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "healthcheck", *args,
        cwd=ROOT, env=env_for(env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(tmp: Path, admin: str) -> Path:
    path = tmp / "config.yaml"
    # The proxy port is chosen at bind: a second free_port() could equal the admin one.
    path.write_text(f"listen: 127.0.0.1:0\nadmin_listen: '{admin}'\n" + ROUTES)
    return path


@asynccontextmanager
async def running(path: Path) -> AsyncIterator[Proxy]:
    proxy = create_app(configmod.load(str(path)))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


ADMINS = [
    "127.0.0.1:{port}",
    "0.0.0.0:{port}",
    pytest.param("[::]:{port}", marks=pytest.mark.skipif(not ipv6(), reason="no IPv6")),
    pytest.param("[::1]:{port}", marks=pytest.mark.skipif(not ipv6(), reason="no IPv6")),
]


@pytest.mark.parametrize("admin", ADMINS)
async def test_a_running_proxy_is_healthy_and_ready(tmp_path: Path, admin: str) -> None:
    path = write_config(tmp_path, admin.format(port=free_port()))
    async with running(path) as _proxy:
        code, out, err = await healthcheck("-c", str(path))
        assert code == 0, err
        assert "/healthz answered 200" in out
        code, out, err = await healthcheck("-c", str(path), "--ready")
        assert (code, "/readyz answered 200" in out) == (0, True), err


async def test_the_config_comes_from_authproxy_config_as_for_serve(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"127.0.0.1:{free_port()}")
    async with running(path) as _proxy:
        code, _out, err = await healthcheck(env={"AUTHPROXY_CONFIG": str(path)})
        assert code == 0, err


async def test_an_admin_port_on_a_unix_socket(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"unix:{tmp_path / 'admin.sock'}")
    async with running(path) as _proxy:
        code, out, err = await healthcheck("-c", str(path))
        assert code == 0, err
        assert f"unix:{tmp_path / 'admin.sock'}/healthz answered 200" in out


async def test_a_draining_proxy_is_not_ready(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"127.0.0.1:{free_port()}")
    async with running(path) as proxy:
        proxy.ready = False  # what a stop does first, while the admin port still answers
        code, _out, err = await healthcheck("-c", str(path), "--ready")
        assert code == 1
        assert "/readyz answered 503" in err
        assert (await healthcheck("-c", str(path)))[0] == 0  # alive all the same


@pytest.mark.parametrize("admin", ["127.0.0.1:{port}", "0.0.0.0:{port}"])
async def test_nothing_listening_is_unhealthy(tmp_path: Path, admin: str) -> None:
    path = write_config(tmp_path, admin.format(port=free_port()))
    code, out, err = await healthcheck("-c", str(path))
    assert code == 1
    assert out == ""
    assert "/healthz: Connection refused" in err
    assert "Traceback" not in err


async def test_a_listener_that_never_answers_fails_within_the_timeout(tmp_path: Path) -> None:
    with socket.socket() as silent:  # the kernel accepts; nobody reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        path = write_config(tmp_path, f"127.0.0.1:{silent.getsockname()[1]}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        code, _out, err = await healthcheck("-c", str(path), "--timeout", "0.5")
        assert code == 1
        assert "no answer in time" in err
        assert loop.time() - started < 25  # the deadline held: not a hang until the kill


async def test_an_invalid_config_or_no_admin_port_is_1_not_docker_reserved_2(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  a: {upstream: nope}\n")
    code, _out, err = await healthcheck("-c", str(bad))
    assert code == 1
    assert "invalid configuration" in err
    off = tmp_path / "off.yaml"
    off.write_text("admin_listen: false\n" + ROUTES)
    code, _out, err = await healthcheck("-c", str(off))
    assert code == 1
    assert "admin_listen is off" in err
