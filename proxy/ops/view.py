"""What the ops modules see of the running proxy: a Protocol, not :class:`proxy.app.Proxy`.

The admin port, readiness and the reloader read a few attributes of the proxy and
call one method; they never need the composition root itself. Naming those here
keeps every import pointing down (``app`` builds the proxy and hands it to ops;
ops never imports ``app``), and tests may hand ops anything that has these.
:class:`proxy.app.Proxy` satisfies both protocols structurally: it declares nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from proxy.clock import Clock
from proxy.config.model import Config
from proxy.proxying.runtime import RouteRuntime
from proxy.telemetry.metrics import Metrics
from proxy.tokens.stores.base import TokenStore


class ProxyView(Protocol):
    """The read side: what /metrics, /healthz, /readyz and /status show."""

    @property
    def config(self) -> Config: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def store(self) -> TokenStore: ...

    @property
    def routes(self) -> Mapping[str, RouteRuntime]: ...

    #: the config is loaded and the listeners are up
    @property
    def ready(self) -> bool: ...

    #: a stop began: in-flight requests are finishing, no new ones are wanted
    @property
    def draining(self) -> bool: ...


class Reloadable(ProxyView, Protocol):
    """What the reloader needs besides: applying a validated config."""

    async def reload(self, new: Config) -> Mapping[str, list[str]]: ...


__all__ = ["ProxyView", "Reloadable"]
