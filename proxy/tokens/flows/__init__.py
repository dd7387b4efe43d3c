"""Auth flows: one module per flow, each a :class:`~proxy.tokens.manager.TokenSource`.

A flow only fetches. Caching, refreshing early and invalidation live in
:class:`~proxy.tokens.manager.TokenManager`. Presets (``presets.py``) are data that
expand to these flows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.config.model import (
    ClientCredentialsAuth,
    JwtBearerAuth,
    LoginAuth,
    RefreshTokenAuth,
    RouteConfig,
)

if TYPE_CHECKING:
    from proxy.clock import Clock
    from proxy.tokens.flows.base import RequestCounter
    from proxy.tokens.flows.client import TokenClient
    from proxy.tokens.token import TokenSource


def build_source(
    route: RouteConfig, client: TokenClient, clock: Clock, count: RequestCounter | None = None
) -> TokenSource | None:
    """The token source for ``route``, or None for ``none``/``static`` auth."""
    auth = route.auth
    if isinstance(auth, ClientCredentialsAuth):
        from proxy.tokens.flows.client_credentials import ClientCredentialsFlow

        return ClientCredentialsFlow(route.name, auth, client, clock, count)
    if isinstance(auth, RefreshTokenAuth):
        from proxy.tokens.flows.refresh_token import RefreshTokenFlow

        return RefreshTokenFlow(route.name, auth, client, clock, count)
    if isinstance(auth, JwtBearerAuth):
        from proxy.tokens.flows.jwt_bearer import JwtBearerFlow

        return JwtBearerFlow(route.name, auth, client, clock, count)
    if isinstance(auth, LoginAuth):
        from proxy.tokens.flows.login import LoginFlow

        return LoginFlow(route.name, auth, client, clock, count)
    return None
