"""The running proxy: servers, routes and their lifetimes.

:func:`create_app` is what both the CLI and the tests call. The proxy port is the
lean server of :mod:`proxy.http1` (no router, no middleware chain: the hot path is
one function); the admin port is another instance of that server, with the
handler of :mod:`proxy.ops.admin`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Coroutine

from proxy.clock import Clock, SystemClock
from proxy.config.model import Config
from proxy.config.values import Listen
from proxy.errors import (
    Forbidden,
    MethodNotAllowed,
    Overloaded,
    ProxyError,
    error_answer,
)
from proxy.http1.request import Request
from proxy.http1.server import Server
from proxy.ops.admin import admin_handler
from proxy.proxying.exchange import Exchange, new_request_id
from proxy.proxying.forward import forward
from proxy.proxying.refusals import Refusals, refusal_answer
from proxy.proxying.replay import ReplayBudget
from proxy.proxying.router import Router
from proxy.proxying.runtime import RouteRuntime
from proxy.telemetry.logs import access as log_access
from proxy.telemetry.logs import access_log, remember_secrets
from proxy.telemetry.metrics import Metrics, method_label
from proxy.tokens.stores.base import TokenStore, open_store

log = logging.getLogger("authproxy")

INBOUND_TOKEN = "X-Authproxy-Token"
_INBOUND_KEY = INBOUND_TOKEN.lower().encode()


class Proxy:
    """One authproxy: the proxy listener, the admin listener, and the routes."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        store: TokenStore | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        #: share the proxy port with other processes (``serve --workers``)
        self.reuse_port = reuse_port
        self.clock: Clock = clock or SystemClock()
        self.metrics = Metrics()
        self.metrics.recent.now = self.clock.time
        self.refusals = Refusals(self.metrics)
        self.replay_budget = ReplayBudget(config.limits.max_replay_total)
        self.store: TokenStore = store or open_store(config.token_store, metrics=self.metrics)
        self.routes: dict[str, RouteRuntime] = {}
        self.router: Router[RouteRuntime] = Router([])
        self.ready = False
        self.draining = False
        self._server: Server | None = None
        self._admin: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.proxy_address: Listen | None = None
        self.admin_address: Listen | None = None
        self._allow = config.allow_from
        self._inbound = config.inbound_token.encode() if config.inbound_token else None
        #: runtimes replaced by a reload, closed once their in-flight requests finish
        self._retired: set[RouteRuntime] = set()
        remember_secrets(config)

    # -- lifetime ---------------------------------------------------------------

    async def start(self) -> None:
        """Build the routes, bind both listeners, and start fetching tokens."""
        self._build_routes(self.config)
        limits = self.config.limits
        self.refusals.install(asyncio.get_running_loop())
        server = self._server = Server(
            self.handle,
            max_header_size=limits.max_header_size,
            idle_timeout=limits.idle_timeout,
            backlog=limits.backlog,
            error_answer=refusal_answer,
            on_refused=self.refusals.on_refused,
        )
        self.proxy_address = await self._bind(server, self.config.listen, self.reuse_port)
        self._spawn(self.refusals.watch_fds(server))
        if self.config.admin_listen is not None:
            admin = self._admin = Server(
                admin_handler(self),
                max_header_size=limits.max_header_size,
                idle_timeout=limits.idle_timeout,
                error_answer=refusal_answer,
            )
            self.admin_address = await self._bind(admin, self.config.admin_listen)
        self.ready = True
        for rt in self.routes.values():
            if rt.manager is not None:
                self._spawn(self._prime(rt))
        if self.metrics.shared_dir is not None:
            self._spawn(self._sync_metrics())
        log.info(
            "authproxy listening",
            extra={"listen": str(self.proxy_address), "routes": list(self.routes)},
        )

    async def _bind(self, server: Server, where: Listen, reuse_port: bool = False) -> Listen:
        """Listen where the config says; the address bound (the port chosen, for 0)."""
        if where.path is not None:
            if os.path.exists(where.path):
                os.unlink(where.path)
            await server.listen_unix(where.path)
            os.chmod(where.path, self.config.unix_socket_mode)
            return where
        port = await server.listen_tcp(where.host, where.port, reuse_port=reuse_port)
        return Listen(host=where.host, port=port)

    async def stop(self, *, now: bool = False) -> None:
        """Graceful: not ready, stop accepting, let in-flight requests finish, close.
        ``now`` (a second SIGTERM): close at once, cutting in-flight requests."""
        self.ready = False
        self.draining = True
        if self._server is not None:
            await self._server.shutdown(0.0 if now else self.config.shutdown_grace)
            self._server = None
        if self._admin is not None:
            # Last: probes see "not ready" until the proxy port has drained.
            await self._admin.shutdown(0.0 if now else 1.0)
            self._admin = None
        for task in list(self._tasks):
            task.cancel()
        for rt in [*self.routes.values(), *self._retired]:
            await rt.close()
        self._retired.clear()
        await self.store.close()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # keep a reference until done
        task.add_done_callback(self._tasks.discard)

    async def _sync_metrics(self) -> None:
        while True:  # cancelled by stop()
            self.metrics.sync()
            await asyncio.sleep(1.0)

    async def _prime(self, rt: RouteRuntime) -> None:
        assert rt.manager is not None
        try:
            await rt.manager.prime()
        except ProxyError as exc:
            log.warning("no token yet: %s", exc.message, extra={"route": rt.name})

    # -- reload ---------------------------------------------------------------------

    async def reload(self, new: Config) -> dict[str, list[str]]:
        """Serve ``new`` from now on, without disturbing requests in flight.

        A route whose config is unchanged keeps its runtime, and so its token. Any
        other route gets a new runtime; when its credentials or endpoints changed,
        its token store key changes too, so the old token is never used again.
        Replaced and removed runtimes close once their in-flight requests finish.
        Listener, store and server settings need a restart: that is logged.
        Raises (and changes nothing) when a new route cannot be built.
        """
        old = self.config
        for what in ("listen", "admin_listen", "token_store", "shutdown_grace"):
            if getattr(old, what) != getattr(new, what):
                log.warning("config reload: %s changed; it takes effect after a restart", what)
        for what in ("max_header_size", "idle_timeout"):
            if getattr(old.limits, what) != getattr(new.limits, what):
                log.warning(
                    "config reload: limits.%s changed; it takes effect after a restart", what
                )
        outcome: dict[str, list[str]] = {"added": [], "changed": [], "removed": [], "kept": []}
        routes: dict[str, RouteRuntime] = {}
        fresh: list[RouteRuntime] = []
        try:
            for rc in new.routes:
                current = self.routes.get(rc.name)
                if current is not None and current.config == rc:
                    routes[rc.name] = current
                    outcome["kept"].append(rc.name)
                    continue
                rt = RouteRuntime(rc, clock=self.clock, metrics=self.metrics, store=self.store)
                fresh.append(rt)
                routes[rc.name] = rt
                outcome["changed" if current is not None else "added"].append(rc.name)
        except BaseException:
            for rt in fresh:
                await rt.close()
            raise
        outcome["removed"] = [name for name in self.routes if name not in routes]
        retired = [rt for name, rt in self.routes.items() if routes.get(name) is not rt]
        # The swap: no await from here to the end, so every request sees either
        # the old routes or the new ones, never a mix.
        self.routes = routes
        self.router = Router([(rt.config.prefix, rt) for rt in routes.values()])
        self.config = new
        self._allow = new.allow_from
        self._inbound = new.inbound_token.encode() if new.inbound_token else None
        remember_secrets(new)
        for rt in retired:
            if rt.manager is not None:
                rt.manager.retire()
            self._retired.add(rt)
            self._spawn(self._close_when_idle(rt))
        for name in outcome["removed"]:
            self.metrics.forget_route(name)
        for rt in fresh:
            if rt.manager is not None:
                self._spawn(self._prime(rt))
        return outcome

    async def _close_when_idle(self, rt: RouteRuntime) -> None:
        # Requests on an old runtime are bounded by its timeout; past that, close anyway.
        deadline = time.monotonic() + rt.config.timeout + 5.0
        while rt.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await rt.close()
        self._retired.discard(rt)

    # -- routes ---------------------------------------------------------------------

    def _build_routes(self, config: Config) -> None:
        self.routes = {
            r.name: RouteRuntime(r, clock=self.clock, metrics=self.metrics, store=self.store)
            for r in config.routes
        }
        self.router = Router([(rt.config.prefix, rt) for rt in self.routes.values()])

    @property
    def url(self) -> str:
        """The proxy's base URL (TCP listeners only); handy in tests."""
        a = self.proxy_address
        assert a is not None and a.path is None
        return f"http://{_url_host(a.host)}:{a.port}"

    @property
    def admin_url(self) -> str:
        a = self.admin_address
        assert a is not None and a.path is None
        return f"http://{_url_host(a.host)}:{a.port}"

    # -- the hot path -----------------------------------------------------------------

    async def handle(self, request: Request) -> None:
        """Answer one request on the proxy port; never raises for the client's sake."""
        started = time.perf_counter()
        route: RouteRuntime | None = None
        ex = Exchange(request.request_id or new_request_id())
        try:
            if request.method == "CONNECT":
                raise MethodNotAllowed("CONNECT is not served: authproxy is not an open proxy")
            if self._allow or self._inbound is not None:
                self._check_access(request)
            match = self.router.match(request.raw_path)
            route = match.route
            if route.inflight >= route.config.max_concurrent:
                raise Overloaded(
                    f"more than {route.config.max_concurrent} requests in flight",
                    retry_after=1,
                )
            route.inflight += 1
            try:
                await forward(request, route, match, ex, self.replay_budget)
            finally:
                route.inflight -= 1
        except ProxyError as err:
            if err.route is None and route is not None:
                err.route = route.name
            self.metrics.proxy_errors.labels(route.name if route else "", err.code).inc()
            if err.status >= 500:
                self._warn(route, err)
            # The connection ends with a 413 or 408: the rest of the body is not read.
            self._answer_error(request, err, ex, close=err.status in (408, 413))
        except Exception as exc:
            if isinstance(exc, ConnectionError) and request.client_gone:
                pass  # the client went away: nobody to answer
            else:
                log.exception("unexpected error", extra={"route": route.name if route else ""})
                internal = ProxyError(
                    "internal error in authproxy", route=route.name if route else None
                )
                self._answer_error(request, internal, ex, close=False)
        elapsed = time.perf_counter() - started
        # 499: the client closed the connection before any answer (as nginx logs it)
        status = request.status or 499
        if route is not None:
            route.count(method_label(request.method), status)
            route.m_duration.observe(elapsed)
        else:  # refused before any route (no route, CONNECT, allow_from): route=""
            self.metrics.requests.labels("", method_label(request.method), str(status)).inc()
        if access_log.isEnabledFor(logging.INFO):
            log_access(
                route.name if route else "",
                request.method,
                request.path,
                status,
                elapsed,
                ex,
                request.error_code,
            )

    @staticmethod
    def _warn(route: RouteRuntime | None, err: ProxyError) -> None:
        """A 5xx the proxy answered itself: one warning per interval, route and code.

        A token endpoint's failure is not repeated here: the token manager logged it
        (see TokenManager._fail), and each request's ``error`` is in its access line.
        """
        if err.code in ("token_unavailable", "token_backoff"):
            return
        fields = {"route": err.route or "", "error": err.code}
        if route is None:
            log.warning("%s: %s", err.code, err.message, extra=fields)
        else:
            key = (err.code,)
            route.log_throttle.log(
                log, logging.WARNING, key, "%s: %s", err.code, err.message, extra=fields
            )

    @staticmethod
    def _answer_error(request: Request, err: ProxyError, ex: Exchange, *, close: bool) -> None:
        if request.started:
            # Too late for an error answer: cut, so the client sees a truncated one.
            transport = request.transport
            if transport is not None:
                transport.abort()
            return
        status, headers, body = error_answer(err)
        headers.append((b"X-Request-Id", ex.request_id.encode("latin-1", "replace")))
        request.error_code = err.code
        ex.bytes_out = len(body)
        try:
            request.respond(status, headers, body, close=close)
        except ConnectionError:
            pass

    def _check_access(self, request: Request) -> None:
        if self._allow:
            peer = request.remote
            if peer:  # unix sockets have no peer address and count as loopback
                try:
                    ip = ipaddress.ip_address(peer.split("%")[0])
                except ValueError:
                    raise Forbidden("client address not recognised") from None
                if not any(ip in net for net in self._allow):
                    raise Forbidden("client address is not in allow_from")
        if self._inbound is not None:
            sent = request.get_header(_INBOUND_KEY) or b""
            if not hmac.compare_digest(sent, self._inbound):
                raise Forbidden(f"missing or wrong {INBOUND_TOKEN} header")


def _url_host(host: str) -> str:
    """Where a local client reaches a listener: a wildcard on its family's loopback."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"  # bound IPv6-only: 127.0.0.1 would not reach it
    return f"[{host}]" if ":" in host else host


def create_app(
    config: Config,
    *,
    clock: Clock | None = None,
    store: TokenStore | None = None,
    reuse_port: bool = False,
) -> Proxy:
    """A proxy for ``config``, not started yet (``await proxy.start()``)."""
    return Proxy(config, clock=clock, store=store, reuse_port=reuse_port)


__all__ = ["Proxy", "create_app"]
