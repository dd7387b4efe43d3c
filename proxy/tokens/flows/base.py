"""What every flow holds: its route's name, its auth settings, a token client, a
clock, and the counter of its requests to token endpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from proxy.clock import Clock
from proxy.tokens.dpop import DPoPKey
from proxy.tokens.flows.client import TokenClient
from proxy.tokens.token import Token, TokenFetchError, UnusableToken, check_arrival

A = TypeVar("A")

#: called once per HTTP request to a token endpoint: (grant, outcome)
RequestCounter = Callable[[str, str], None]


def _no_count(grant: str, outcome: str) -> None:
    pass


class Flow(Generic[A]):
    """Base of the token sources in this package. Subclasses set ``grant`` and
    implement ``async def fetch(previous, failure=None) -> Token`` (see
    :class:`proxy.tokens.token.TokenSource`). A flow keeps no state between fetches.

    Every HTTP request a flow makes to a token endpoint goes through
    :meth:`counted`, so that ``authproxy_token_requests_total`` counts requests
    (a refused refresh followed by a login is two), not fetches.
    """

    grant: str

    def __init__(
        self,
        route_name: str,
        auth: A,
        client: TokenClient,
        clock: Clock,
        count: RequestCounter | None = None,
    ) -> None:
        self.route = route_name
        self.auth = auth
        self.client = client
        self.clock = clock
        self.count: RequestCounter = count or _no_count
        #: the route's DPoP key (RFC 9449), set by the route when ``dpop: true``
        self.dpop: DPoPKey | None = None

    def counted(self, grant: str) -> _Counted:
        """``async with self.counted("login") as c: ...; return c.token(tok)``."""
        return _Counted(self.clock, self.count, grant)


class _Counted:
    """Counts one token request: ``error`` if it raised, ``unusable`` for a token
    dead on arrival, ``success`` otherwise."""

    def __init__(self, clock: Clock, count: RequestCounter, grant: str) -> None:
        self.clock = clock
        self.count = count
        self.grant = grant
        self.done = False

    async def __aenter__(self) -> _Counted:
        return self

    def token(self, tok: Token, what: str = "token endpoint") -> Token:
        """``tok``, checked usable on arrival (:class:`UnusableToken` otherwise)."""
        try:
            check_arrival(tok, self.clock.time(), what)
        except UnusableToken:
            self._count("unusable")
            raise
        self._count("success")
        return tok

    def resent(self) -> None:
        """The request was answered and sent again (a DPoP nonce): count the first."""
        self.count(self.grant, "error")

    def _count(self, outcome: str) -> None:
        if not self.done:
            self.done = True
            self.count(self.grant, outcome)

    async def __aexit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None and not isinstance(exc, Exception):
            return  # cancelled: the request may not have been sent
        if isinstance(exc, TokenFetchError) and exc.grant is None:
            exc.grant = self.grant  # which request failed: the manager's backoff asks
        self._count("error" if exc is not None else "success")
