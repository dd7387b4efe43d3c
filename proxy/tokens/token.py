"""The token value, the two seams (:class:`TokenSource`, :class:`TokenStore`),
and the errors a source raises.

Split from :mod:`proxy.tokens.manager` (the caching layer) so that flows and stores
depend on the value alone. :mod:`proxy.tokens.manager` re-exports the names
callers use.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, TypedDict, overload

#: the smallest and largest send margin: a token this close to its expiry is not
#: sent any more, it could expire in flight. golang/oauth2 uses 10 s for every
#: token; a fixed 10 s would make a 10 s token unusable, so the margin scales
#: with the lifetime (a tenth of it) between these bounds.
MIN_SKEW = 1.0
MAX_SKEW = 10.0
#: kept for callers of the old constant: the smallest margin
EXPIRY_SKEW = MIN_SKEW


def expiry_skew(lifetime: float) -> float:
    """How long before its expiry a token of ``lifetime`` seconds stops being sent."""
    return min(MAX_SKEW, max(MIN_SKEW, lifetime / 10.0))


class TokenJSON(TypedDict):
    """A :class:`Token` as a store keeps it (``Token.to_dict``)."""

    access_token: str
    expires_at: float | None
    refresh_token: str | None
    refresh_expires_at: float | None
    obtained_at: float
    how: str
    token_type: str


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and what came with it. Never printed: its repr is masked."""

    access_token: str
    expires_at: float | None = None
    refresh_token: str | None = None
    refresh_expires_at: float | None = None
    obtained_at: float = 0.0
    #: how it was obtained: login, refresh, client_credentials, authorize, config, store
    how: str = "login"
    #: ``DPoP`` for a token bound to the route's DPoP key (RFC 9449), else ``Bearer``
    token_type: str = "Bearer"

    def __repr__(self) -> str:
        exp = "never" if self.expires_at is None else f"{self.expires_at:.0f}"
        return f"Token(***, expires_at={exp}, how={self.how})"

    @property
    def skew(self) -> float:
        """The send margin for this token (see :func:`expiry_skew`)."""
        if self.expires_at is None:
            return MIN_SKEW
        return expiry_skew(max(0.0, self.expires_at - self.obtained_at))

    @property
    def usable_until(self) -> float | None:
        """The last instant the token is sent; None for a token that never expires."""
        return None if self.expires_at is None else self.expires_at - self.skew

    def usable(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at - self.skew

    def refresh_usable(self, now: float) -> bool:
        if not self.refresh_token:
            return False
        return self.refresh_expires_at is None or now < self.refresh_expires_at - MIN_SKEW

    def to_dict(self) -> TokenJSON:
        return TokenJSON(
            access_token=self.access_token,
            expires_at=self.expires_at,
            refresh_token=self.refresh_token,
            refresh_expires_at=self.refresh_expires_at,
            obtained_at=self.obtained_at,
            how=self.how,
            token_type=self.token_type,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Token:
        """The token in ``data`` (what :meth:`to_dict` wrote; unknown keys are
        ignored, missing ones take their defaults); :class:`TypeError` when a
        value has the wrong type."""
        access = data.get("access_token")
        if not isinstance(access, str):
            raise TypeError("access_token is not a string")
        return cls(
            access,
            expires_at=_number(data, "expires_at"),
            refresh_token=_text(data, "refresh_token"),
            refresh_expires_at=_number(data, "refresh_expires_at"),
            obtained_at=_number(data, "obtained_at", 0.0),
            how=_text(data, "how", "login"),
            token_type=_text(data, "token_type", "Bearer"),
        )


@overload
def _number(data: Mapping[str, object], key: str) -> float | None: ...
@overload
def _number(data: Mapping[str, object], key: str, default: float) -> float: ...
def _number(data: Mapping[str, object], key: str, default: float | None = None) -> float | None:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} is not a number")
    return float(value)


@overload
def _text(data: Mapping[str, object], key: str) -> str | None: ...
@overload
def _text(data: Mapping[str, object], key: str, default: str) -> str: ...
def _text(data: Mapping[str, object], key: str, default: str | None = None) -> str | None:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, str):
        return value
    raise TypeError(f"{key} is not a string")


class TokenFetchError(Exception):
    """A source could not get a token. ``message`` is safe to show a client.

    ``retryable`` is true for network errors, timeouts, 5xx and 429; 4xx answers
    (bad credentials, ``invalid_client``) are not retried on their own.
    ``error_code`` is the provider's OAuth2 ``error`` (or ``error.code`` of an
    envelope), like golang/oauth2's ``RetrieveError.ErrorCode``. ``lost`` is
    true when the request may have reached the provider but its answer did not
    come back (a timeout, a cut answer): the provider may have acted on it.
    ``grant`` is the grant of the token request that failed (``login_refresh``
    for a login flow's refresh), set by the flow that sent it.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
        error_code: str | None = None,
        lost: bool = False,
        grant: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.error_code = error_code
        self.lost = lost
        self.grant = grant


class UnusableToken(TokenFetchError):
    """The provider answered a token that cannot be sent: expired on arrival, or
    living shorter than the send margin (``expires_in: 0``, an ``exp`` in the past).

    A provider error, retried with backoff; ``token`` may still be used once by
    the requests waiting for it when it has not expired yet.
    """

    def __init__(self, what: str, token: Token, lifetime: float) -> None:
        super().__init__(
            f"{what} sent a token that is unusable on arrival "
            f"(lifetime {lifetime:.1f}s, shorter than the {token.skew:.0f}s send margin)",
            retryable=True,
        )
        self.token = token


class TokenSource(Protocol):
    """One auth flow. ``fetch`` gets a new token, by refresh when ``previous`` allows.

    ``previous`` is the last token known (possibly expired, or refused by an
    upstream); a source that can refresh uses its refresh token or access token,
    and logs in again when the refresh fails. ``failure`` is why the last fetch
    failed, when it did (the caller keeps it; a source keeps no state).
    """

    #: metrics label for the grant, e.g. ``client_credentials``, ``login``
    grant: str

    async def fetch(
        self, previous: Token | None, failure: TokenFetchError | None = None
    ) -> Token: ...


class TokenStore(Protocol):
    """Where tokens live beyond one request (see :mod:`proxy.tokens.stores.base`)."""

    async def load(self, key: str) -> Token | None: ...
    async def save(self, key: str, token: Token) -> None: ...
    def lock(self, key: str) -> AbstractAsyncContextManager[None]: ...
    async def close(self) -> None: ...


class NeedsConsent(TokenFetchError):
    """No refresh token exists yet: a person must run ``authproxy authorize``."""

    def __init__(self, route: str) -> None:
        super().__init__(
            f"no refresh token for route {route}: run `authproxy authorize {route}` once",
            retryable=False,
        )


def check_arrival(tok: Token, now: float, what: str = "token endpoint") -> Token:
    """``tok``, or :class:`UnusableToken` when it cannot be sent even once more."""
    if tok.expires_at is None or tok.usable(now):
        return tok
    raise UnusableToken(what, tok, tok.expires_at - now)
