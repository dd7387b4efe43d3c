"""A route at run time: its config plus everything built once for it.

Work that can be done once per route is done here, at start-up or reload, and
never per request: the upstream URL pieces and Host header, the TLS context, the
pool of keep-alive upstream connections, the injected header line, the token
manager (with its own client for the token endpoint) and the metric
children.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from multidict import istr
from yarl import URL

from proxy.clock import Clock
from proxy.config.model import RouteConfig, StaticAuth
from proxy.errors import TokenUnavailable
from proxy.http1.pool import Pool as UpstreamPool
from proxy.http1.tls import context_for
from proxy.http1.tunnel import Tunnel
from proxy.telemetry.throttle import Throttle
from proxy.tokens.dpop import DPoPKey
from proxy.tokens.events import TokenMetrics
from proxy.tokens.flows import build_source
from proxy.tokens.flows.client import TokenClient
from proxy.tokens.keys import dpop_key, store_key
from proxy.tokens.manager import Token, TokenManager

if TYPE_CHECKING:
    from proxy.telemetry.metrics import Metrics
    from proxy.tokens.stores.base import TokenStore

log = logging.getLogger("authproxy.route")


def _header_line(name: str, value: str) -> bytes:
    """``Name: value\r\n``; refuses values that could split the header."""
    if any(c in value for c in "\r\n\x00"):
        raise ValueError("header value contains a line break")
    return f"{name}: {value}\r\n".encode("latin-1")


class _Counter(Protocol):
    """A counter's child, prometheus-client's or the lock-free one."""

    def inc(self, amount: float = 1) -> None: ...


def _pool(config: RouteConfig, up: URL, ctx: ssl.SSLContext | None) -> UpstreamPool:
    """The route's keep-alive connections to its upstream (see proxy.http1.pool)."""
    port = up.port or (443 if up.scheme == "https" else 80)
    egress = config.egress_proxy
    via = egress.proxy_for(up.scheme, up.host or "", port) if egress is not None else None
    return UpstreamPool(
        up.host or "",
        port,
        ssl_context=ctx if up.scheme == "https" else None,
        connect_timeout=config.connect_timeout,
        opener=Tunnel(via) if via is not None else None,
    )


class RouteRuntime:
    """One configured route, ready to forward."""

    def __init__(
        self,
        config: RouteConfig,
        *,
        clock: Clock,
        metrics: Metrics,
        store: TokenStore,
    ) -> None:
        self.config = config
        self.name = config.name
        #: this route's failure warnings: one per interval and kind (see Throttle)
        self.log_throttle = Throttle(clock=clock)
        up = URL(config.upstream)
        self.base_path = up.raw_path if up.raw_path.endswith("/") else up.raw_path + "/"
        ctx = context_for(config.tls, https=up.scheme == "https")
        if not config.tls.verify:
            log.warning(
                "TLS verification is OFF for route %s (tls.verify: false): its upstream and "
                "token endpoint are not authenticated",
                config.name,
                extra={"route": config.name},
            )
        self.pool = _pool(config, up, ctx)
        self.host_header = (up.raw_authority or up.raw_host or "").encode("idna")
        self.header: istr | None = None
        #: the injected header's name, lowercased, for filtering the client's copy
        self.header_key: bytes | None = None
        #: the static header line, ready to send (static auth only)
        self.static_line: bytes | None = None
        self._auth_cache: tuple[str, bytes] | None = None
        self.inject_format = config.inject.format
        self.manager: TokenManager | None = None
        self.token_client: TokenClient | None = None
        #: the route's DPoP key pair (RFC 9449), for ``dpop: true``
        self.dpop: DPoPKey | None = None
        self._origin = str(up.origin()) if up.is_absolute() else ""
        if isinstance(config.auth, StaticAuth):
            self._inject(config.auth.header)
            self.static_line = _header_line(config.auth.header, config.auth.value)
        else:
            self._token_flow(ctx, clock, metrics, store)
        self.inflight = 0
        # Read at scrape time: cheaper than two locked updates per request.
        metrics.track_inflight(config.name, lambda: self.inflight)
        self.m_duration = metrics.request_duration.labels(config.name)
        self.m_upstream = metrics.upstream_duration.labels(config.name)
        self._m_requests = metrics.requests
        self._m_retries = metrics.unauthorized_retries
        self._recent = metrics.recent
        metrics.init_route(config.name)
        self._counters: dict[tuple[str, int], _Counter] = {}

    def _inject(self, header: str) -> None:
        self.header = istr(header)
        self.header_key = header.lower().encode("latin-1")

    def _token_flow(
        self, ctx: ssl.SSLContext | None, clock: Clock, metrics: Metrics, store: TokenStore
    ) -> None:
        """The token client, source and manager of a route whose auth fetches tokens."""
        config = self.config
        self.token_client = TokenClient(
            ssl_context=ctx,
            timeout=config.token_timeout,
            connect_timeout=config.connect_timeout,
            egress=config.egress_proxy,
        )
        events = TokenMetrics(metrics, config.name)
        source = build_source(config, self.token_client, clock, events.request)
        if source is None:
            return
        key = store_key(config)
        if getattr(config.auth, "dpop", False):
            self.dpop = DPoPKey(clock.time)
            source.dpop = self.dpop  # type: ignore[attr-defined]
            # Tokens are bound to this process's key: never adopt another's.
            key = dpop_key(key, self.dpop.thumbprint)
        self._inject(config.inject.header)
        self.manager = TokenManager(
            config.name,
            source,
            store=store,
            key=key,
            clock=clock,
            refresh_before=config.refresh_before,
            token_timeout=config.token_timeout,
            events=events,
            refused_cooldown=config.refused_cooldown,
            backoff_cap=config.backoff_cap,
        )

    def count(self, method: str, status: int) -> None:
        key = (method, status)
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = self._m_requests.labels(self.name, method, str(status))
        c.inc()

    def count_retry(self, outcome: str) -> None:
        self._m_retries.labels(self.name, outcome).inc()
        self._recent.note(self.name, outcome)

    def auth_value(self, access_token: str) -> str:
        return self.inject_format.replace("{access_token}", access_token)

    def auth_line(self, token: Token) -> bytes:
        """The injected header line for ``token``, built once per token."""
        cached = self._auth_cache
        if cached is not None and cached[0] is token.access_token:
            return cached[1]
        assert self.header is not None
        try:
            line = _header_line(self.header, self.auth_value(token.access_token))
        except ValueError:
            raise TokenUnavailable(
                "the provider's token cannot be sent in a header (control or non-Latin-1 "
                "characters)",
                route=self.name,
            ) from None
        self._auth_cache = (token.access_token, line)
        return line

    def auth_for(self, token: Token, method: str, target: str) -> bytes:
        """The header lines that authenticate one request to ``target`` (the
        upstream path and query) with ``token``.

        A bearer's line is built once per token; a DPoP-bound token needs a fresh
        proof per request (RFC 9449 7.1): ``Authorization: DPoP`` and ``DPoP``.
        """
        dpop = self.dpop
        if dpop is None or token.token_type != "DPoP":
            return self.auth_line(token)
        proof = dpop.proof(method, self._origin + target.partition("?")[0], token.access_token)
        try:
            return _header_line("Authorization", "DPoP " + token.access_token) + _header_line(
                "DPoP", proof
            )
        except ValueError:
            raise TokenUnavailable(
                "the provider's token cannot be sent in a header", route=self.name
            ) from None

    def dpop_challenge(self, target: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """An upstream 401 is a DPoP nonce challenge: the nonce is kept; retry once."""
        return self.dpop is not None and self.dpop.challenged(self._origin + target, headers)

    async def close(self) -> None:
        if self.manager is not None:
            await self.manager.close()
        self.pool.close()
        if self.token_client is not None:
            await self.token_client.close()
