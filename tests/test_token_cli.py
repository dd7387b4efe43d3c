"""``authproxy token -c FILE ROUTE``, run as a subprocess against a fake provider."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from tests.fakes import B2B, Fault, GetPaid, serve

ROOT = Path(__file__).resolve().parent.parent


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def b2b_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
routes:
  b2b:
    upstream: {url}/api/
    auth:
      preset: b2b_jwt
      username: b2b-api-user
      password: ${{env:B2B_PASSWORD}}
      base_url: {url}/
"""
    )
    return path


async def test_token_prints_expiry_and_source_not_the_token(tmp_path: Path) -> None:
    fake = B2B()
    async with serve(fake) as url:
        config = b2b_config(tmp_path, url)
        env = {"B2B_PASSWORD": fake.password}
        code, out, err = await run_cli("token", "-c", str(config), "b2b", env=env)
        assert code == 0, err
        assert fake.logins == 1
        token = fake.issued[0]
        assert token not in out and token not in err
        assert fake.password not in out + err
        lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        assert lines["route"].strip() == "b2b"
        assert lines["source"].strip() == "login"
        expires = lines["expires"].strip()
        stamp = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(fake.access_tokens[token].expires_at))
        assert expires.startswith(stamp) and "(in 3" in expires  # about an hour
        assert lines["refresh token"].strip() == "yes"

        code, out, err = await run_cli("token", "-c", str(config), "b2b", "--show", env=env)
        assert code == 0, err
        assert f"token:   {fake.issued[-2]}" in out  # the second login's access token


async def test_token_failure_exits_1_with_the_reason(tmp_path: Path) -> None:
    fake = GetPaid()
    fake.always_fault = Fault(
        status=401, body=b'{"error": "invalid_client"}', content_type="application/json"
    )
    async with serve(fake) as url:
        path = tmp_path / "c.yaml"
        path.write_text(
            f"""
routes:
  gp:
    auth:
      preset: getpaid
      client_id: id
      client_secret: ${{env:GP_SECRET}}
      base_url: {url}/
      token_url: {url}/oauth/token
"""
        )
        code, out, err = await run_cli(
            "token", "-c", str(path), "gp", env={"GP_SECRET": "s3cr3t-value"}
        )
    assert code == 1
    assert "token_unavailable: token endpoint answered 401 (invalid_client)" in err
    assert "s3cr3t-value" not in out + err
    assert fake.token_requests == 1


async def test_token_unknown_route_exits_2(tmp_path: Path) -> None:
    config = b2b_config(tmp_path, "http://127.0.0.1:9")
    code, _, err = await run_cli("token", "-c", str(config), "nope", env={"B2B_PASSWORD": "x"})
    assert code == 2 and "no route 'nope'" in err and "b2b" in err
