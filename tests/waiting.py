"""Waiting for a condition instead of sleeping for a guessed time.

A fixed sleep before an assert is either too short on a loaded machine (a flaky
test) or too long everywhere (a slow suite). These poll a condition with a deadline
generous enough for a busy 2-core box, and fail with what was being waited for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

DEADLINE = 20.0


async def until(
    cond: Callable[[], Any], what: str = "condition", timeout: float = DEADLINE
) -> None:
    """Return as soon as ``cond()`` is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout:.0f}s"
        await asyncio.sleep(0.005)


def managers_idle(proxy: Any) -> bool:
    """No route of ``proxy`` has a token fetch in flight (background refreshes done)."""
    return all(
        rt.manager is None or getattr(rt.manager, "_task", None) is None
        for rt in proxy.routes.values()
    )
