"""Replicas under paced load, and the figures a platform team would look at.

:class:`Paced` sends one request every ``interval`` seconds per replica (each
replica's loop waits for its answer before the next slot), and records every
request's start, duration and status. :func:`figures` reads that and the strict
fake's own records: failed requests, client 401s, logins and refreshes per token
window, requests that reached the API with a token already invalidated, and the
longest stall. Used by the store tests and by ``bench/fleet.py``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.fakes import InvoiceNg


@dataclass
class Sample:
    url: str
    start: float
    seconds: float
    status: int  # 0: no answer (connection error)


@dataclass
class Paced:
    """Steady load: one request every ``interval`` per URL."""

    interval: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0

    async def run(self, urls: list[str], seconds: float) -> None:
        self.started = time.monotonic()
        stop_at = self.started + seconds
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout) as s:

            async def loop(url: str) -> None:
                slot = time.monotonic()
                while slot < stop_at:
                    start = time.monotonic()
                    status = 0
                    try:
                        async with s.get(url) as r:
                            await r.read()
                            status = r.status
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    self.samples.append(Sample(url, start, time.monotonic() - start, status))
                    slot = max(slot + self.interval, time.monotonic())
                    await asyncio.sleep(max(0.0, slot - time.monotonic()))

            await asyncio.gather(*(loop(u) for u in urls))

    def after(self, t: float) -> list[Sample]:
        """Samples that started ``t`` seconds or more after the run began."""
        return [x for x in self.samples if x.start - self.started >= t]

    def longest(self, since: float = 0.0) -> float:
        return max((x.seconds for x in self.after(since)), default=0.0)


def reused_invalidated(fake: InvoiceNg) -> int:
    """API requests that carried a token the provider had already invalidated."""
    n = 0
    for req in fake.api_log:
        if req.status != 401:
            continue
        token = bearer_token_of(req.headers)
        record = fake.access_tokens.get(token or "")
        if record is not None and record.revoked:
            n += 1
    return n


def bearer_token_of(headers: dict[str, str]) -> str | None:
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    parts = value.split()
    return parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else None


def figures(load: Paced, fake: InvoiceNg, seconds: float, window: float) -> dict[str, Any]:
    """What the closing note quotes, for one run."""
    samples = load.samples
    failed = [x for x in samples if x.status != 200]
    unauthorized = sum(1 for x in failed if x.status == 401)
    windows = max(seconds / window, 1e-9)
    return {
        "requests": len(samples),
        "failed": len(failed),
        "client_401": unauthorized,
        "client_401_share": round(unauthorized / max(1, len(samples)), 4),
        "logins": fake.logins,
        "refreshes": fake.refreshes,
        "logins_per_s": round(fake.logins / seconds, 2),
        "logins_per_window": round(fake.logins / windows, 2),
        "refreshes_per_window": round(fake.refreshes / windows, 2),
        "reused_invalidated": reused_invalidated(fake),
        "longest_stall_s": round(load.longest(), 3),
    }


__all__ = ["Paced", "Sample", "figures", "reused_invalidated"]
