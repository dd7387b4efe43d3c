"""Helpers shared by the token and provider tests (fakes, metrics, leak checks)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import FakeProvider


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, Any]:
    """(status, JSON body or raw bytes, headers) of one request."""
    async with http.request(method, url, **kwargs) as r:
        raw = await r.read()
        body: Any = raw
        if raw[:1] in (b"{", b"["):
            try:
                body = json.loads(raw)
            except ValueError:
                pass
        return r.status, body, r.headers


async def metric(http: aiohttp.ClientSession, admin_url: str, name: str, **labels: str) -> float:
    """The value of one sample on the admin port's /metrics (0 when absent)."""
    async with http.get(admin_url + "/metrics") as r:
        text = (await r.read()).decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def assert_no_token(text: str | bytes, *fakes: FakeProvider) -> None:
    """No access or refresh token any fake issued appears in ``text``."""
    blob = text.decode("latin-1") if isinstance(text, bytes) else text
    for fake in fakes:
        for token in fake.issued:
            assert token not in blob, "a token issued by the provider leaked"
