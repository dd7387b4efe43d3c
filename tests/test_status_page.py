"""/status in a real browser: headless Chromium renders it, the test reads the text.

The page is what an operator opens during an incident: per route, readiness, when
the token expires and will refresh, its source, the last error and when, the 401
replays of the last minutes, the store's state; and it reloads by itself, with no
script. The rendered DOM (``--dump-dom``, after layout) is checked, not the HTML
string the server sent.
"""

from __future__ import annotations

import asyncio
import html
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.clock import ManualClock
from tests.fakes import Fault, GetPaid, InvoiceNg, serve
from tests.tokenkit import assert_no_token, call
from tests.waiting import until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)"
)
ENV = {"INV_KEY": "invoice-ng-key-for-status-page", "GP_SECRET": "getpaid-secret-status-page"}


async def chromium(tmp_path: Path, url: str, *extra: str) -> str:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium'}", "--no-first-run", *extra, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode()


def text_of(dom: str) -> str:
    body = dom.split("<body", 1)[1].split(">", 1)[1]
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def yaml_for(inv_url: str, gp_url: str) -> str:
    return f"""
routes:
  inv:
    auth: {{preset: invoice_ng, api_key: "${{env:INV_KEY}}", base_url: {inv_url}/v1/}}
  gp:
    upstream: {gp_url}/
    auth:
      preset: getpaid
      client_id: getpaid-test-client-id
      client_secret: ${{env:GP_SECRET}}
      token_url: {gp_url}/oauth/token
"""


async def test_status_page_renders_what_an_operator_needs(
    tmp_path: Path, start_proxy: Any, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    inv = InvoiceNg(api_key=ENV["INV_KEY"], clock=clock)
    gp = GetPaid(client_secret=ENV["GP_SECRET"], clock=clock)
    inv.always_fault = Fault(status=500)  # one provider is down
    async with serve(inv) as inv_url, serve(gp) as gp_url:
        proxy = await start_proxy(yaml_for(inv_url, gp_url), env=ENV, clock=clock)
        await until(lambda: proxy.routes["inv"].manager.last_error, "inv's failed attempt")
        assert (await call(http, "GET", proxy.url + "/gp/a"))[0] == 200
        gp.revoke_all()  # the next request meets a 401 and is replayed with a new token
        assert (await call(http, "GET", proxy.url + "/gp/b"))[0] == 200

        dom = await chromium(tmp_path, proxy.admin_url + "/status", "--dump-dom")
        await chromium(
            tmp_path, proxy.admin_url + "/status", "--window-size=1400,500",
            f"--screenshot={tmp_path / 'status.png'}",
        )  # fmt: skip
    text = text_of(dom)
    assert "authproxy: ready" in text  # one provider down does not make the pod unready
    assert '<meta http-equiv="refresh" content="5">' in dom and "<script" not in dom
    assert "Token store: type: memory" in text
    rows = {
        m.group(1): " ".join(text_of("<body>" + m.group(0)).split())
        for m in re.finditer(r"<tr><td>(\w+)</td>.*?</tr>", dom.split("<table>", 1)[1])
    }
    # The clock is stopped: the times are exact. The token came an hour before its
    # expiry, and refreshes refresh_before (60 s) ahead of it.
    assert re.fullmatch(
        r"gp /gp/ getpaid yes valid in 60m 0s \(\d\d:\d\d:00Z\) in 59m 0s \(\d\d:\d\d:00Z\) "
        r"client_credentials none 1 replayed, 0 refused 2 0",
        rows["gp"],
    ), rows["gp"]
    assert re.fullmatch(
        r"inv /inv/ invoice_ng no none no token retrying \(backoff\) none yet "
        r"token endpoint answered 500 \(0s ago \(\d\d:\d\d:\d\dZ\)\) 0 replayed, 0 refused 0 0",
        rows["inv"],
    ), rows["inv"]
    assert (tmp_path / "status.png").stat().st_size > 5000
    assert_no_token(dom, inv, gp)
    for secret in ENV.values():
        assert secret not in dom
