"""What every flow holds: its route's name, its auth settings, a token client, a clock."""

from __future__ import annotations

from typing import Generic, TypeVar

from proxy.clock import Clock
from proxy.flows.client import TokenClient

A = TypeVar("A")


class Flow(Generic[A]):
    """Base of the token sources in this package. Subclasses set ``grant`` and
    implement ``async def fetch(previous) -> Token`` (see proxy.tokens.TokenSource)."""

    grant: str

    def __init__(self, route_name: str, auth: A, client: TokenClient, clock: Clock) -> None:
        self.route = route_name
        self.auth = auth
        self.client = client
        self.clock = clock
