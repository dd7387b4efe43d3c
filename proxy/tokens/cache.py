"""The route's cached token, and what is known about it besides.

The manager reads :attr:`TokenCache.fresh_token` and :attr:`fresh_until` on
every request: while the cached token is that one and the time before that,
the token is usable and no refresh is due, in two comparisons.
"""

from __future__ import annotations

import math

from proxy.tokens.token import Token


class TokenCache:
    __slots__ = ("fresh_token", "fresh_until", "refused", "replacement", "token")

    def __init__(self) -> None:
        #: the current token, usable or not (never sent once unusable)
        self.token: Token | None = None
        #: the token known usable and not due a refresh before ``fresh_until``
        self.fresh_token: Token | None = None
        self.fresh_until = 0.0
        #: the last token refused upstream; kept for its refresh token, never sent
        self.refused: Token | None = None
        #: the token fetched to replace a refused one, until it is seen working
        self.replacement: Token | None = None

    def fresh(self, tok: Token, until: float = math.inf) -> None:
        """``tok`` needs no look before ``until``."""
        self.fresh_token, self.fresh_until = tok, until

    def set(self, tok: Token) -> None:
        """A new current token; the refused one is forgotten."""
        self.token = tok
        self.refused = None

    def drop(self) -> Token | None:
        """The current token was refused upstream: kept aside, never sent again."""
        current = self.token
        self.refused = current
        self.token = None
        return current
