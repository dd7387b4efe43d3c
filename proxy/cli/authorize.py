"""``authproxy authorize ROUTE``: the one-time OAuth2 authorization-code consent.

For ``oauth2_refresh_token`` routes whose first refresh token comes from a
person (Invoiced, seed 001). The command:

1. prints the authorization URL (``response_type=code``, ``client_id``,
   ``redirect_uri``, ``scope``, a random ``state``, and a PKCE S256
   ``code_challenge`` when the route sets ``pkce: true``);
2. listens on the ``redirect_uri``'s loopback host and port for the callback
   (a redirect_uri elsewhere cannot reach this process, so it is refused);
3. checks ``state`` (in constant time), exchanges the code at the token
   endpoint (RFC 6749 4.1.3, form body), and
4. saves the token, refresh token included, in the token store under the same
   key the proxy uses, so that a running or restarted proxy picks it up.

Exit status: 0 stored; 1 consent denied, wrong state, timeout, or exchange
failed; 2 the configuration cannot be used for this (wrong route or auth type,
memory store, redirect_uri not on loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import html
import re
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from proxy.cli.common import load, run
from proxy.config import Config, Listen, RefreshTokenAuth, RouteConfig
from proxy.exit_codes import EXIT_CONFIG, EXIT_FAIL, EXIT_OK
from proxy.http1.tls import context_for
from proxy.telemetry import logs as logs
from proxy.tokens.flows.client import TokenClient
from proxy.tokens.flows.client_credentials import client_fields, form_fields, oauth2_token
from proxy.tokens.flows.http import request_json
from proxy.tokens.keys import store_key
from proxy.tokens.stores.base import StoreError, TokenStore, describe, open_store
from proxy.tokens.token import Token, TokenFetchError


@dataclass(frozen=True)
class Outcome:
    """How the callback ended: ``ok`` with a message for the terminal and the page."""

    ok: bool
    message: str


def pkce_pair() -> tuple[str, str]:
    """A PKCE ``code_verifier`` and its S256 ``code_challenge`` (RFC 7636)."""
    verifier = secrets.token_urlsafe(64)  # 86 characters of the allowed alphabet
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(auth: RefreshTokenAuth, state: str, challenge: str | None) -> str:
    assert auth.authorize_url and auth.redirect_uri
    params: list[tuple[str, str]] = [
        ("response_type", "code"),
        ("client_id", auth.client_id),
        ("redirect_uri", auth.redirect_uri),
    ]
    if auth.scope:
        params.append(("scope", auth.scope))
    params.append(("state", state))
    if challenge is not None:
        params += [("code_challenge", challenge), ("code_challenge_method", "S256")]
    # RFC 8707: the resources the grant is for; then the route's own extras
    # (prompt=consent, access_type=offline: oidc-provider and Google grant no
    # refresh token without them).
    params += [("resource", r) for r in auth.resource]
    params += list(auth.authorize_params.items())
    return str(URL(auth.authorize_url).extend_query(params))


def issuer_mismatch(auth: RefreshTokenAuth, iss: str | None) -> str | None:
    """RFC 9207: why the callback's ``iss`` shows a mix-up, or None.

    Checked when the callback carries ``iss`` and the route's ``issuer`` is known:
    a different value means the code came from another authorization server.
    """
    if iss is None or not auth.issuer:
        return None
    if iss.rstrip("/") == auth.issuer.rstrip("/"):
        return None
    return (
        "the callback's iss does not name this route's issuer (RFC 9207: a mix-up "
        "attack, or the wrong provider); nothing was stored"
    )


def _say(text: str) -> None:
    print(text, flush=True)


def _fail(text: str) -> None:
    print(f"authproxy authorize: {text}", file=sys.stderr, flush=True)


def _problems(config: Config, route: RouteConfig) -> str | None:
    """Why this route cannot be authorized with this config, or None."""
    auth = route.auth
    if not isinstance(auth, RefreshTokenAuth):
        return (
            f"route {route.name} uses auth type {auth.type}; authorize is for "
            "oauth2_refresh_token routes (such as the invoiced preset)"
        )
    missing = [k for k in ("authorize_url", "redirect_uri") if not getattr(auth, k)]
    if missing:
        keys = " and ".join(f"routes.{route.name}.auth.{k}" for k in missing)
        return f"{keys} must be set to authorize"
    if config.token_store.type == "memory":
        return (
            "token_store.type is memory: the refresh token would be lost when this "
            "command exits. Configure a file store (token_store: {type: file, path: ...}) "
            "or a redis store (token_store: {type: redis, url: ...}) and run it again"
        )
    redirect = URL(auth.redirect_uri or "")
    host = (redirect.host or "").strip("[]")
    if redirect.scheme != "http" or not host or not Listen(host=host).is_loopback:
        return (
            f"routes.{route.name}.auth.redirect_uri must be an http:// loopback address "
            "(such as http://127.0.0.1:8765/callback) that this command can listen on; "
            f"got {auth.redirect_uri}"
        )
    return None


def command(args: argparse.Namespace) -> int:
    logs.setup(args.log_format, args.log_level)
    config = load(args.config)
    if config is None:
        return EXIT_CONFIG
    return run(authorize(config, args.route, timeout=args.timeout, open_browser=False))


async def authorize(config: Config, route_name: str, *, timeout: float, open_browser: bool) -> int:
    """Run the consent for ``route_name``; the exit status."""
    try:
        route = config.route(route_name)
    except KeyError:
        known = ", ".join(r.name for r in config.routes) or "none"
        _fail(f"no route {route_name!r}; routes: {known}")
        return EXIT_CONFIG
    problem = _problems(config, route)
    if problem is not None:
        _fail(problem)
        return EXIT_CONFIG
    auth = route.auth
    assert isinstance(auth, RefreshTokenAuth) and auth.redirect_uri
    try:
        store = open_store(config.token_store)
    except StoreError as exc:
        _fail(f"token store: {exc}")
        return EXIT_FAIL
    try:
        return await _authorize(config, route, auth, store, timeout, open_browser)
    finally:
        await store.close()


class _Consent:
    """One authorization in progress: what its callback must match, and how it ended."""

    def __init__(
        self, config: Config, route: RouteConfig, auth: RefreshTokenAuth, store: TokenStore
    ) -> None:
        self.route, self.auth, self.store = route, auth, store
        self.key = store_key(route)
        self.where = describe(config.token_store)
        self.state = secrets.token_urlsafe(32)
        self.verifier: str | None = None
        challenge: str | None = None
        if auth.pkce:
            self.verifier, challenge = pkce_pair()
        self.url = authorization_url(auth, self.state, challenge)
        self.redirect = URL(auth.redirect_uri or "")
        self.done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    def address(self) -> tuple[str, int]:
        """Where to listen for the callback: the redirect_uri's host and port."""
        host = self.redirect.host
        return ("127.0.0.1" if host in ("localhost", None) else host), self.redirect.port or 80

    async def store_problem(self) -> str | None:
        """Why the store cannot keep the result, or None: asked before the person is."""
        try:
            await self.store.load(self.key)
        except (OSError, StoreError) as exc:
            return f"cannot use the {self.where}: {exc}"
        if not getattr(self.store, "reachable", True):
            return f"cannot reach the {self.where}; nothing could be stored"
        return None

    async def exchange(self, code: str) -> Outcome:
        """Trade ``code`` for a token and store it."""
        try:
            tok = await _exchange(self.route, self.auth, code, self.verifier)
        except TokenFetchError as exc:
            return Outcome(False, f"the code exchange failed: {exc.message}")
        if not tok.refresh_token:
            return Outcome(
                False,
                "the token endpoint answered without a refresh_token, so authproxy "
                "could not renew access later; nothing was stored",
            )
        try:
            async with self.store.lock(self.key):
                await self.store.save(self.key, tok)
        except (OSError, StoreError) as exc:
            return Outcome(False, f"the token could not be stored in the {self.where}: {exc}")
        if not getattr(self.store, "reachable", True):
            return Outcome(False, f"the {self.where} was unreachable; the token was not stored")
        return Outcome(
            True,
            f"route {self.route.name} is authorized; its refresh token is stored in the "
            f"{self.where}",
        )

    def refusal(self, query: Mapping[str, str]) -> Outcome | None:
        """How a callback without a usable code ends, or None when it carries one."""
        if not hmac.compare_digest(query.get("state", "").encode(), self.state.encode()):
            return Outcome(
                False,
                "the callback's state does not match this authorization (an old or "
                "forged link); nothing was stored. Run `authproxy authorize` again",
            )
        if (mixup := issuer_mismatch(self.auth, query.get("iss"))) is not None:
            return Outcome(False, mixup)
        if "error" in query:
            error = _printable(query.get("error", ""))
            detail = _printable(query.get("error_description", ""))
            if error == "access_denied":
                text = "consent was denied at the provider (error=access_denied)"
            else:
                text = f"the provider refused the authorization (error={error})"
            return Outcome(False, text + (f": {detail}" if detail else ""))
        return None

    async def callback(self, request: web.Request) -> web.StreamResponse:
        if request.path != self.redirect.path:
            return web.Response(status=404, text="Not found\n")
        if self.done.done():
            return _page(True, "This authorization has already finished.", status=200)
        query = request.rel_url.query
        outcome = self.refusal(query)
        if outcome is None:
            if not query.get("code"):
                return _page(False, "This callback carries neither a code nor an error.", 400)
            outcome = await self.exchange(query["code"])
        text = outcome.message[0].upper() + outcome.message[1:] + "."
        resp = _page(outcome.ok, text, 200 if outcome.ok else 400)
        # Send the page before the command ends and the listener goes away.
        await resp.prepare(request)
        await resp.write_eof()
        if not self.done.done():
            self.done.set_result(outcome)
        return resp


async def _authorize(
    config: Config,
    route: RouteConfig,
    auth: RefreshTokenAuth,
    store: TokenStore,
    timeout: float,
    open_browser: bool,
) -> int:
    consent = _Consent(config, route, auth, store)
    # Ask the person only once we know the result can be kept.
    problem = await consent.store_problem()
    if problem is not None:
        _fail(problem)
        return EXIT_FAIL
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", consent.callback)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        outcome = await _wait(consent, runner, timeout, open_browser)
    finally:
        await runner.cleanup()
    if outcome is None:
        return EXIT_FAIL
    if outcome.ok:
        _say(outcome.message)
        return EXIT_OK
    _fail(outcome.message)
    return EXIT_FAIL


async def _wait(
    consent: _Consent, runner: web.AppRunner, timeout: float, open_browser: bool
) -> Outcome | None:
    """Listen, show the URL, and wait for the callback; None once a failure is told."""
    host, port = consent.address()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port} for the callback: {exc.strerror or exc}")
        return None
    name = consent.route.name
    _say(f"Authorize route {name}: open this URL in a browser and approve access:")
    _say("")
    _say(f"    {consent.url}")
    _say("")
    _say(f"Waiting up to {timeout:.0f}s for the callback on {consent.auth.redirect_uri} ...")
    if open_browser:
        import webbrowser

        await asyncio.get_running_loop().run_in_executor(None, webbrowser.open, consent.url)
    try:
        return await asyncio.wait_for(asyncio.shield(consent.done), timeout)
    except TimeoutError:
        _fail(
            f"no callback within {timeout:.0f}s; nothing was stored. Run "
            f"`authproxy authorize {name}` again and approve within the time "
            "(--timeout sets it)"
        )
        return None


async def _exchange(
    route: RouteConfig, auth: RefreshTokenAuth, code: str, verifier: str | None
) -> Token:
    """The token for ``code`` (RFC 6749 4.1.3; RFC 7636 with a verifier)."""
    fields: dict[str, Any] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": auth.redirect_uri,
    }
    headers = client_fields(auth, auth.token_url, fields, time.time())
    if verifier is not None:
        fields["code_verifier"] = verifier
    form = form_fields(fields)
    up = URL(auth.token_url)
    ctx = context_for(route.tls, https=up.scheme == "https")
    client = TokenClient(
        ssl_context=ctx,
        timeout=route.token_timeout,
        connect_timeout=route.connect_timeout,
        egress=route.egress_proxy,
    )
    data = await request_json(client, "POST", auth.token_url, headers=headers, form=form)
    return oauth2_token(data, now=time.time(), default_ttl=auth.default_ttl, how="authorize")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str) -> str:
    """Provider text for a terminal line: no control characters, bounded."""
    return _CONTROL.sub(" ", text)[:200]


def _page(ok: bool, message: str, status: int = 200) -> web.Response:
    title = "Authorization complete" if ok else "Authorization failed"
    after = (
        "You can close this window."
        if ok
        else "Nothing was stored. You can close this window and run the command again."
    )
    body = (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>authproxy: {title}</title></head><body>"
        f"<h1>{title}</h1><p>{html.escape(message)}</p><p>{after}</p></body></html>"
    )
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )
