"""What every flow holds: its route's name, its auth settings, a session, a clock."""

from __future__ import annotations

from typing import Generic, TypeVar

import aiohttp

from proxy.clock import Clock

A = TypeVar("A")


class Flow(Generic[A]):
    """Base of the token sources in this package. Subclasses set ``grant`` and
    implement ``async def fetch(previous) -> Token`` (see proxy.tokens.TokenSource)."""

    grant: str

    def __init__(
        self, route_name: str, auth: A, session: aiohttp.ClientSession, clock: Clock
    ) -> None:
        self.route = route_name
        self.auth = auth
        self.session = session
        self.clock = clock
