"""The `authproxy` command as a user runs it: exit codes and what it prints."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def authproxy(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )


def example_env() -> dict[str, str]:
    text = (ROOT / "config.example.yaml").read_text()
    return {name: "x-" + name.lower() for name in re.findall(r"\$\{env:([A-Z0-9_]+)\}", text)}


def test_example_config_passes_check() -> None:
    result = authproxy("check", "-c", "config.example.yaml", env=example_env())
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout


def test_example_config_explain_masks_secrets() -> None:
    env = example_env()
    result = authproxy("check", "-c", "config.example.yaml", "--explain", env=env)
    assert result.returncode == 0, result.stderr
    assert "type: oauth2_client_credentials" in result.stdout  # getpaid expanded
    for name, value in env.items():
        if "ID" not in name and "USERNAME" not in name:
            assert value not in result.stdout, name


def test_check_refuses_a_malformed_encryption_key_without_showing_it(tmp_path: Path) -> None:
    """Found by ``check``, before a deploy, not at the first ``serve``."""
    cfg = tmp_path / "store.yaml"
    cfg.write_text(
        "token_store:\n  type: file\n  path: /tmp/t.json\n  encryption_key: ${env:KEY}\n"
        "routes:\n  a: {upstream: http://127.0.0.1:9/, auth: {type: none}}\n"
    )
    result = authproxy("check", "-c", str(cfg), env={"KEY": "hunter2-not-a-key"})
    assert result.returncode == 2
    assert f"{cfg}:4: token_store.encryption_key: is not a Fernet key" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    good = "x" * 43 + "="  # 32 bytes in url-safe base64
    assert authproxy("check", "-c", str(cfg), env={"KEY": good}).returncode == 0


def test_check_lists_every_error_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "routes:\n  a:\n    upstream: nope\n    auth: {type: static}\n  b:\n    auth: {}\n"
    )
    result = authproxy("check", "-c", str(cfg))
    assert result.returncode == 2
    assert f"{cfg}:3: routes.a.upstream" in result.stderr
    assert "routes.a.auth.value: is required" in result.stderr
    assert "routes.b" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = authproxy("check", "-c", str(tmp_path / "none.yaml"))
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr


def test_default_config_path_comes_from_env(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("routes:\n  a: {upstream: 'http://x/', auth: {type: none}}\n")
    result = authproxy("check", env={"AUTHPROXY_CONFIG": str(cfg)})
    assert result.returncode == 0, result.stderr


def test_usage_errors_exit_2() -> None:
    assert authproxy().returncode == 2
    assert authproxy("frobnicate").returncode == 2


def free_ports(n: int = 1) -> list[int]:
    """``n`` different free ports: all held open at once while chosen, since a port
    closed and asked for again may come back (and listen == admin_listen is refused)."""
    import socket

    held = [socket.socket() for _ in range(n)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_runs_and_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    port, admin = free_ports(2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\n"
        "routes:\n  a: {upstream: 'http://127.0.0.1:9/', auth: {type: none}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_serve_with_bad_config_exits_2_before_binding(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("listen: 0.0.0.0:1\nroutes:\n  a: {upstream: 'http://x/', auth: {type: none}}\n")
    result = authproxy("serve", "-c", str(cfg))
    assert result.returncode == 2
    assert "listen" in result.stderr


def test_serve_on_a_busy_port_exits_1_with_a_message(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:0\n"
            "routes:\n  a: {upstream: 'http://x/', auth: {type: none}}\n"
        )
        result = authproxy("serve", "-c", str(cfg))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = [line for line in ci.splitlines() if line.startswith("python3 -m venv")][0]
    assert command in readme
    assert "authproxy demo" in readme


# -- help, and output piped into `head` ---------------------------------------------

#: what each subcommand's --help offers: only the options it uses
OPTIONS = {
    "serve": {"--config", "--log-format", "--log-level", "--workers"},
    "check": {"--config", "--explain", "--connect"},
    "token": {"--config", "--log-format", "--log-level", "--show"},
    "authorize": {"--config", "--log-format", "--log-level", "--timeout"},
    "demo": {"--log-format", "--log-level", "--keep"},
    "healthcheck": {"--config", "--ready", "--timeout"},
}


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_each_command_shows_its_own_options_with_help_and_examples(command: str) -> None:
    result = authproxy(command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    options_part = text.split("options:", 1)[1].split("examples:", 1)[0]
    shown = set(re.findall(r"(--[a-z][a-z-]+)", options_part)) - {"--help"}
    assert shown == OPTIONS[command]
    examples = text.split("examples:", 1)[1]
    assert f"authproxy {command}" in examples
    assert authproxy("--help").stdout.count(command) >= 1


def test_every_option_of_every_command_has_help_text() -> None:
    from proxy.cli.main import parser

    top = parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(OPTIONS)
    for name, command in sub.choices.items():
        assert command.description and command.epilog, name
        for action in command._actions:
            assert action.help, f"{name} {action.dest}"


def test_an_option_another_command_uses_is_refused() -> None:
    result = authproxy("check", "--workers", "2")
    assert result.returncode == 2
    assert "unrecognized arguments: --workers" in result.stderr


def into_closed_pipe(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run with stdout on a real pipe whose reader has gone, as `... | head` leaves it."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=60,
            cwd=ROOT,
        )
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (("--help",), 0),  # argparse itself lets help go unread
        (("serve", "--help"), 0),
        (("check", "--explain", "-c", "config.example.yaml"), 1),
        (("check", "-c", "config.example.yaml"), 1),
        (("demo",), 1),
    ],
)
def test_no_traceback_when_the_reader_of_the_output_is_gone(
    args: tuple[str, ...], status: int
) -> None:
    code, err = into_closed_pipe(*args, env=example_env())
    assert err == "", err
    assert code == status  # 1 for a lost output, as Python's documentation advises


def test_piped_into_head_prints_the_first_line_only(tmp_path: Path) -> None:
    env = {**os.environ, **example_env()}
    cmd = f"{sys.executable} -m proxy check --explain -c config.example.yaml | head -1"
    result = subprocess.run(
        ["sh", "-c", cmd], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.count("\n") == 1
    assert result.stderr == ""
