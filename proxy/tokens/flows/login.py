"""A custom token exchange (``type: login``): Invoice.ng, Taxizer, the B2B JWT API.

A request template logs in; an optional second template refreshes. Strings in
either may hold ``{access_token}`` and ``{refresh_token}``, filled from the
previous token by plain string replacement (never ``str.format``: a JSON body
or a secret may contain braces). A response mapping of dotted paths
(``data.access_token``) reads the answer.

Expiry, in order of preference: ``expires_at`` (epoch seconds or ISO 8601),
``expires_in``, the JWT ``exp`` claim of the access token, ``default_ttl``.

Refresh when the previous token has what the refresh template needs (and its
refresh token has not expired); when the refresh is refused, log in again.
When the refresh endpoint itself is failing (network, 5xx), the error is
raised so the manager backs off, rather than doubling the load on a provider
that is down; a second such failure in a row falls back to logging in. The
manager passes the last failure to :meth:`LoginFlow.fetch`: the flow keeps no
count of its own (a source only fetches).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from proxy.clock import Clock
from proxy.config.model import LoginAuth, RequestSpec, ResponseSpec
from proxy.tokens.flows.base import Flow, RequestCounter
from proxy.tokens.flows.client import TokenClient
from proxy.tokens.flows.expiry import dig, earliest, jwt_exp, parse_instant, parse_lifetime
from proxy.tokens.flows.http import request_json
from proxy.tokens.jsondoc import JSONObject
from proxy.tokens.token import Token, TokenFetchError

log = logging.getLogger("authproxy.flows")

#: the grant of a login flow's refresh requests (its logins are ``login``)
REFRESH_GRANT = "login_refresh"
ACCESS = "{access_token}"
REFRESH = "{refresh_token}"


def fill_text(value: str, values: Mapping[str, str]) -> str:
    """``value`` with every placeholder replaced (never ``str.format``)."""
    for placeholder, text in values.items():
        if placeholder in value:
            value = value.replace(placeholder, text)
    return value


def fill(value: object, values: Mapping[str, str]) -> object:
    """``value`` with every placeholder in its strings replaced, recursively."""
    if isinstance(value, str):
        return fill_text(value, values)
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    return value


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [str.__str__(value)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _uses(spec: RequestSpec, placeholder: str) -> bool:
    # Walk the values, not their repr: secrets show as *** in a repr.
    parts = [spec.url, dict(spec.headers), spec.json, dict(spec.form or {})]
    return any(placeholder in s for s in _strings(parts))


def _refresh_was_failing(failure: TokenFetchError | None) -> bool:
    """The last fetch failed at a refresh endpoint that was failing (network, 5xx)."""
    return failure is not None and failure.retryable and failure.grant == REFRESH_GRANT


class LoginFlow(Flow[LoginAuth]):
    """Log in with a request template; refresh with another one when configured."""

    grant = "login"

    def __init__(
        self,
        route_name: str,
        auth: LoginAuth,
        client: TokenClient,
        clock: Clock,
        count: RequestCounter | None = None,
    ) -> None:
        super().__init__(route_name, auth, client, clock, count)
        refresh = auth.refresh
        self._refresh_needs_access = refresh is not None and _uses(refresh, ACCESS)
        self._refresh_needs_refresh = refresh is not None and _uses(refresh, REFRESH)

    async def fetch(self, previous: Token | None, failure: TokenFetchError | None = None) -> Token:
        refresh = self.auth.refresh
        if refresh is not None and previous is not None and self.can_refresh(previous):
            try:
                return await self._send(
                    refresh,
                    self.auth.refresh_response or self.auth.response,
                    previous,
                    how="refresh",
                    what="refresh endpoint",
                )
            except TokenFetchError as exc:
                if exc.retryable and not _refresh_was_failing(failure):
                    raise  # the manager backs off; the next attempt may log in
                log.info(
                    "refresh failed (%s); logging in again",
                    exc.message,
                    extra={"route": self.route},
                )
        return await self._send(self.auth.request, self.auth.response, previous, how="login")

    def can_refresh(self, previous: Token) -> bool:
        """Whether ``previous`` holds what the refresh template needs, still valid."""
        if self.auth.refresh is None:
            return False
        if self._refresh_needs_refresh and not previous.refresh_usable(self.clock.time()):
            return False
        return not (self._refresh_needs_access and not previous.access_token)

    async def _send(
        self,
        spec: RequestSpec,
        mapping: ResponseSpec,
        previous: Token | None,
        *,
        how: str,
        what: str = "token endpoint",
    ) -> Token:
        values = {
            ACCESS: previous.access_token if previous is not None else "",
            REFRESH: (previous.refresh_token or "") if previous is not None else "",
        }
        headers = {str(k): str(fill(v, values)) for k, v in spec.headers.items()}
        form = None
        if spec.form is not None:
            form = {k: fill_text(v, values) for k, v in spec.form.items()}
        body = fill(spec.json, values) if spec.json is not None else None
        async with self.counted(REFRESH_GRANT if how == "refresh" else self.grant) as req:
            data = await request_json(
                self.client,
                spec.method,
                fill_text(spec.url, values),
                headers=headers,
                form=form,
                json_body=body,
                what=what,
            )
            return req.token(self._token(data, mapping, previous, how=how, what=what), what)

    def _token(
        self,
        data: JSONObject,
        mapping: ResponseSpec,
        previous: Token | None,
        *,
        how: str,
        what: str,
    ) -> Token:
        now = self.clock.time()
        access = dig(data, mapping.access_token)
        if isinstance(access, int | float) and not isinstance(access, bool):
            access = str(access)
        if not isinstance(access, str) or not access:
            raise TokenFetchError(
                f"{what} answer has no access token at {mapping.access_token!r}",
                retryable=False,
            )
        expires_at = earliest(
            self._expiry(data, mapping.expires_at, mapping.expires_in, now), jwt_exp(access)
        )
        if expires_at is None:
            expires_at = now + self.auth.default_ttl

        refresh, refresh_expires_at = self._refresh(data, mapping, previous, how=how, now=now)
        return Token(access, expires_at, refresh, refresh_expires_at, now, how)

    def _refresh(
        self,
        data: JSONObject,
        mapping: ResponseSpec,
        previous: Token | None,
        *,
        how: str,
        now: float,
    ) -> tuple[str | None, float | None]:
        """The refresh token of the answer and its expiry; without one, a refresh
        keeps the one it used (no rotation)."""
        kept = how == "refresh" and previous is not None
        if mapping.refresh_token:
            value = dig(data, mapping.refresh_token)
            expiry = self._expiry(data, mapping.refresh_expires_at, mapping.refresh_expires_in, now)
            if isinstance(value, str) and value:
                return value, expiry
            if not kept:
                return None, expiry
        if previous is not None and kept:
            return previous.refresh_token, previous.refresh_expires_at
        return None, None

    def _expiry(
        self, data: JSONObject, at_path: str | None, in_path: str | None, now: float
    ) -> float | None:
        if at_path:
            raw = dig(data, at_path)
            at = parse_instant(raw)
            if at is not None:
                return at
            if raw is not None:
                log.warning(
                    "cannot read an expiry at %r; trying the next source",
                    at_path,
                    extra={"route": self.route},
                )
        if in_path:
            lifetime = parse_lifetime(dig(data, in_path))
            if lifetime is not None:
                return now + lifetime
        return None
