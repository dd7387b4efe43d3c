"""The servers under test: upstream nginx, nginx as a proxy, the token server, authproxy.

Each nginx runs as the current user in its own prefix directory (pid file, logs and
temp paths inside it), with one worker process.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import BenchError, Processes, find_tool, free_port, http_get, wait_port

REPO = Path(__file__).resolve().parent.parent
SMALL_SIZE = 1024
BIG_SIZE = 1 << 20


def _nginx_prelude(d: Path, workers: int) -> str:
    user = ""
    if os.geteuid() == 0:
        # nginx started by root hands its workers to "nobody", who cannot read our 0700 dir.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    return f"""{user}
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
"""


def _nginx_http_common(d: Path) -> str:
    return f"""
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
"""


def write_upstream_conf(d: Path, port: int) -> Path:
    (d / "tmp").mkdir(parents=True)
    (d / "www").mkdir()
    (d / "www" / "big").write_bytes(os.urandom(BIG_SIZE))
    small = "a" * SMALL_SIZE
    conf = d / "nginx.conf"
    conf.write_text(
        _nginx_prelude(d, 1)
        + f"""
http {{{_nginx_http_common(d)}
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {d}/www;
        location = /small {{ default_type application/octet-stream; return 200 "{small}"; }}
        location = /big {{ default_type application/octet-stream; }}
        location = /auth {{ default_type text/plain; return 200 "$http_authorization"; }}
    }}
}}
"""
    )
    return conf


def write_proxy_conf(d: Path, port: int, upstream_port: int) -> Path:
    (d / "tmp").mkdir(parents=True)
    conf = d / "nginx.conf"
    conf.write_text(
        _nginx_prelude(d, 1)
        + f"""
http {{{_nginx_http_common(d)}
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer x";
        }}
    }}
}}
"""
    )
    return conf


def start_nginx(procs: Processes, name: str, d: Path, conf: Path, port: int) -> int:
    argv = [
        find_tool("nginx") or "nginx",
        "-p",
        str(d),
        "-c",
        str(conf),
        "-e",
        str(d / "error.log"),
    ]
    check = subprocess.run(argv + ["-t", "-q"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise BenchError(f"{name}: nginx -t failed:\n{check.stderr.strip()}")
    proc = procs.start(name, argv + ["-g", "daemon off;"])
    try:
        wait_port(port, proc, 10, name)
    except BenchError as exc:
        err = (d / "error.log").read_text(errors="replace") if (d / "error.log").exists() else ""
        raise BenchError(f"{exc}\n{err.strip()}") from exc
    return proc.pid


def authproxy_config(port: int, admin: int, upstream: int, token_port: int) -> dict[str, Any]:
    up = f"http://127.0.0.1:{upstream}/"
    return {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": f"127.0.0.1:{admin}",
        "routes": {
            "static": {
                "prefix": "/static/",
                "upstream": up,
                "auth": {"type": "static", "header": "Authorization", "value": "Bearer x"},
            },
            "token": {
                "prefix": "/token/",
                "upstream": up,
                "refresh_before": "1s",
                "auth": {
                    "type": "login",
                    "request": {
                        "method": "POST",
                        "url": f"http://127.0.0.1:{token_port}/login",
                        "json": {"k": "v"},
                    },
                    "response": {"access_token": "token", "expires_in": "ttl"},
                },
            },
        },
    }


def dump_yaml(data: dict[str, Any]) -> str:
    try:
        import yaml  # the project's own dependency
    except ImportError:  # JSON is YAML too
        return json.dumps(data, indent=2)
    return str(yaml.safe_dump(data, sort_keys=False))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def serve_command(custom: str | None) -> list[str]:
    """The command that serves authproxy, without ``-c CONFIG``."""
    if custom:
        return shlex.split(custom)
    return [sys.executable, "-m", "proxy", "serve"]


def serve_help(cmd: list[str]) -> tuple[bool, str]:
    """Whether the serve command runs at all, and its --help text or error."""
    try:
        res = subprocess.run(
            [*cmd, "--help"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=child_env(),
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return False, f"`{shlex.join(cmd)} --help` did not answer in 30s"
    except OSError as exc:
        return False, f"`{shlex.join(cmd)}`: {exc}"
    text = (res.stdout + res.stderr).strip()
    return res.returncode == 0, text


def start_authproxy(
    procs: Processes,
    tmp: Path,
    cmd: list[str],
    upstream_port: int,
    token_port: int,
    *,
    name: str = "authproxy",
    extra: tuple[str, ...] = (),
) -> tuple[int, int]:
    """Start authproxy; its (port, pid) once /healthz answers 200."""
    ok, help_text = serve_help(cmd)
    if not ok:
        raise BenchError(f"`{shlex.join(cmd)} --help` fails:\n" + help_text[-1500:])
    port, admin = free_port(), free_port()
    config = tmp / f"{name}.yaml"
    config.write_text(dump_yaml(authproxy_config(port, admin, upstream_port, token_port)))
    argv = [*cmd, "-c", str(config), *extra]
    if "--log-level" in help_text:
        argv += ["--log-level", "warning"]
    proc = procs.start(name, argv, env=child_env())
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise BenchError(
                f"authproxy exited with status {proc.returncode}:\n{procs.log_tail(name)}"
            )
        try:
            status, _ = http_get(f"http://127.0.0.1:{admin}/healthz", timeout=1)
            if status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"authproxy /healthz not 200 within 20s:\n{procs.log_tail(name)}")
        time.sleep(0.1)
    return port, proc.pid


def token_stats(port: int) -> int:
    try:
        status, body = http_get(f"http://127.0.0.1:{port}/stats", timeout=2)
        return int(json.loads(body)["issued"]) if status == 200 else -1
    except (OSError, ValueError, KeyError):
        return -1


def start_token_server(procs: Processes, ttl: int) -> int:
    """Start bench/token_server.py; its port."""
    port = free_port()
    argv = [sys.executable, str(REPO / "bench" / "token_server.py"), "--port", str(port)]
    proc = procs.start("token-server", [*argv, "--ttl", str(ttl)], env=child_env())
    wait_port(port, proc, 20, "token server")
    return port
