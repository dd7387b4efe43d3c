"""``authproxy demo``: runs offline in seconds, shows the whole token flow, and
never prints a token."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
#: what the demo provider's tokens look like, and any long random-looking run
TOKENISH = re.compile(r"demo-(at|rt)-|[0-9a-f]{24,}")


def test_demo_shows_the_flow_and_exits_0() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "demo"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert elapsed < 15, out
    for line in (
        "1. Token obtained (login)",
        "provider counted: logins=1 refreshes=0 api_calls=1 rejected_401=0",
        "2. Cached",
        "provider counted: logins=1 refreshes=0 api_calls=3 rejected_401=0",
        "3. Refreshed early, in the background",
        "provider counted: logins=1 refreshes=1 api_calls=4 rejected_401=0",
        "4. Expired and refreshed",
        "provider counted: logins=1 refreshes=2 api_calls=5 rejected_401=0",
        "5. A 401 answered by refresh and replay",
        "provider counted: logins=1 refreshes=3 api_calls=7 rejected_401=1",
        "replayed 1 time; the provider saw the same body both times: yes",
        "All requests answered 200",
    ):
        assert line in out, f"missing: {line}\n{out}"
    assert not TOKENISH.search(out + proc.stderr)
    assert "Traceback" not in proc.stderr


async def test_demo_keep_serves_until_interrupted() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "demo", "--keep",
        cwd=ROOT, env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while True:
            raw = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
            assert raw, "demo --keep ended early:\n" + "".join(lines)
            lines.append(raw.decode())
            if raw.startswith(b"Press Ctrl-C"):
                break
        text = "".join(lines)
        url = re.search(r"curl -s (http://127\.0\.0\.1:\d+/demo/invoices)", text)
        assert url is not None, text
        async with aiohttp.ClientSession() as http, http.get(url.group(1)) as resp:
            assert resp.status == 200
            assert (await resp.json())["hello"] == "from the demo provider"
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b"demo: stopped" in rest
    assert not TOKENISH.search(text + rest.decode() + err.decode())
