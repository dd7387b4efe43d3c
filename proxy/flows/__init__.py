"""Auth flows: one module per flow, each a :class:`~proxy.tokens.TokenSource`.

A flow only fetches. Caching, refreshing early and invalidation live in
:class:`~proxy.tokens.TokenManager`. Presets (``presets.py``) are data that
expand to these flows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.config import (
    ClientCredentialsAuth,
    JwtBearerAuth,
    LoginAuth,
    RefreshTokenAuth,
    RouteConfig,
)

if TYPE_CHECKING:
    from proxy.clock import Clock
    from proxy.flows.base import RequestCounter
    from proxy.flows.client import TokenClient
    from proxy.tokens import TokenSource


def build_source(
    route: RouteConfig, client: TokenClient, clock: Clock, count: RequestCounter | None = None
) -> TokenSource | None:
    """The token source for ``route``, or None for ``none``/``static`` auth."""
    auth = route.auth
    if isinstance(auth, ClientCredentialsAuth):
        from proxy.flows.client_credentials import ClientCredentialsFlow

        return ClientCredentialsFlow(route.name, auth, client, clock, count)
    if isinstance(auth, RefreshTokenAuth):
        from proxy.flows.refresh_token import RefreshTokenFlow

        return RefreshTokenFlow(route.name, auth, client, clock, count)
    if isinstance(auth, JwtBearerAuth):
        from proxy.flows.jwt_bearer import JwtBearerFlow

        return JwtBearerFlow(route.name, auth, client, clock, count)
    if isinstance(auth, LoginAuth):
        from proxy.flows.login import LoginFlow

        return LoginFlow(route.name, auth, client, clock, count)
    return None
