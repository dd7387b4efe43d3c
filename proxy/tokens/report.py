"""What the token layer reports: the log lines of a route's token, and the
events (:class:`TokenEvents`) that :class:`~proxy.tokens.events.TokenMetrics`
counts.

:class:`TokenReport` is every line and event of a route's
:class:`~proxy.tokens.manager.TokenManager`; never the token itself.
"""

from __future__ import annotations

import logging
from typing import Protocol

from proxy.clock import Clock
from proxy.telemetry.throttle import Throttle
from proxy.tokens.token import Token, TokenFetchError, UnusableToken

log = logging.getLogger("authproxy.tokens")


class TokenEvents(Protocol):
    """What the manager reports; metrics and logs implement it."""

    def fetched(self, route: str, grant: str, token: Token, seconds: float) -> None: ...
    def failed(self, route: str, grant: str, error: TokenFetchError, seconds: float) -> None: ...
    def cache(self, route: str, hit: bool) -> None: ...
    def lock_wait(self, route: str, seconds: float) -> None: ...


class NullEvents:
    def fetched(self, route: str, grant: str, token: Token, seconds: float) -> None:
        pass

    def failed(self, route: str, grant: str, error: TokenFetchError, seconds: float) -> None:
        pass

    def cache(self, route: str, hit: bool) -> None:
        pass

    def lock_wait(self, route: str, seconds: float) -> None:
        pass


def log_token_event(event: str, route: str, source: str, tok: Token, now: float) -> None:
    """A token event line: what happened and where from, never the token."""
    if log.isEnabledFor(logging.INFO):
        expires_in = None if tok.expires_at is None else round(tok.expires_at - now, 1)
        log.info(
            "token %s",
            event,
            extra={"route": route, "event": event, "source": source, "expires_in": expires_in},
        )


class TokenReport:
    """The log lines and events of one route's token; never the token itself."""

    def __init__(self, route: str, events: TokenEvents, clock: Clock) -> None:
        self.route = route
        self.events = events
        #: a failing token endpoint: one warning per interval (see Throttle)
        self.throttle = Throttle(clock=clock)

    def adopted(self, tok: Token, now: float) -> None:
        """A token another process (or an earlier run) stored is used."""
        log_token_event("obtained", self.route, "store", tok, now)

    def fetching(self, grant: str, previous: Token | None) -> None:
        log.debug(
            "fetching a token",
            extra={
                "route": self.route,
                "grant": grant,
                "previous": previous.how if previous else None,
            },
        )

    def fetched(self, grant: str, tok: Token, seconds: float, now: float) -> None:
        self.events.fetched(self.route, grant, tok, seconds)
        event = "refreshed" if tok.how == "refresh" else "obtained"
        log_token_event(event, self.route, tok.how, tok, now)

    def failed(self, grant: str, exc: TokenFetchError, seconds: float, wait: float) -> None:
        self.events.failed(self.route, grant, exc, seconds)
        event = "unusable" if isinstance(exc, UnusableToken) else "failed"
        self.throttle.log(
            log, logging.WARNING, (event,),
            "token request failed: %s; next attempt in %.1fs", exc.message, wait,
            extra={
                "route": self.route, "event": event, "source": grant,
                "token_status": exc.status,
            },
        )  # fmt: skip

    def broken(self) -> None:
        """A flow raised something else than a TokenFetchError: a bug."""
        log.exception("token flow failed unexpectedly", extra={"route": self.route})

    def dropped(self, tok: Token) -> None:
        log.info(
            "token refused upstream; dropped",
            extra={"route": self.route, "event": "invalidated", "source": tok.how},
        )

    def load_failed(self, exc: Exception) -> None:
        name = type(exc).__name__
        log.warning(
            "token store load failed: %s", name, extra={"route": self.route, "exception": name}
        )

    def save_failed(self, exc: Exception) -> None:
        log.error(
            "token store save failed (%s); using the token anyway",
            type(exc).__name__,
            extra={"route": self.route, "exception": type(exc).__name__},
        )
