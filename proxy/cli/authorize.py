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

import asyncio
import base64
import hashlib
import hmac
import html
import ipaddress
import re
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from proxy.config.model import Config, RefreshTokenAuth, RouteConfig
from proxy.http1.tls import context_for
from proxy.tokens.flows.client import TokenClient
from proxy.tokens.flows.client_credentials import client_fields, form_fields, oauth2_token
from proxy.tokens.flows.http import request_json
from proxy.tokens.keys import store_key
from proxy.tokens.manager import Token, TokenFetchError
from proxy.tokens.stores.base import StoreError, TokenStore, describe, open_store

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


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


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    if redirect.scheme != "http" or not redirect.host or not _loopback(redirect.host):
        return (
            f"routes.{route.name}.auth.redirect_uri must be an http:// loopback address "
            "(such as http://127.0.0.1:8765/callback) that this command can listen on; "
            f"got {auth.redirect_uri}"
        )
    return None


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


async def _authorize(
    config: Config,
    route: RouteConfig,
    auth: RefreshTokenAuth,
    store: TokenStore,
    timeout: float,
    open_browser: bool,
) -> int:
    key = store_key(route)
    where = describe(config.token_store)
    # Ask the person only once we know the result can be kept.
    try:
        await store.load(key)
    except (OSError, StoreError) as exc:
        _fail(f"cannot use the {where}: {exc}")
        return EXIT_FAIL
    if not getattr(store, "reachable", True):
        _fail(f"cannot reach the {where}; nothing could be stored")
        return EXIT_FAIL

    state = secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair() if auth.pkce else (None, None)
    url = authorization_url(auth, state, challenge)
    redirect = URL(auth.redirect_uri or "")
    host = "127.0.0.1" if redirect.host == "localhost" else (redirect.host or "127.0.0.1")
    port = redirect.port or 80
    done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    async def exchange(code: str) -> Outcome:
        try:
            tok = await _exchange(route, auth, code, verifier)
        except TokenFetchError as exc:
            return Outcome(False, f"the code exchange failed: {exc.message}")
        if not tok.refresh_token:
            return Outcome(
                False,
                "the token endpoint answered without a refresh_token, so authproxy "
                "could not renew access later; nothing was stored",
            )
        try:
            async with store.lock(key):
                await store.save(key, tok)
        except (OSError, StoreError) as exc:
            return Outcome(False, f"the token could not be stored in the {where}: {exc}")
        if not getattr(store, "reachable", True):
            return Outcome(False, f"the {where} was unreachable; the token was not stored")
        return Outcome(
            True, f"route {route.name} is authorized; its refresh token is stored in the {where}"
        )

    async def callback(request: web.Request) -> web.StreamResponse:
        if request.path != redirect.path:
            return web.Response(status=404, text="Not found\n")
        if done.done():
            return _page(True, "This authorization has already finished.", status=200)
        query = request.rel_url.query
        if not hmac.compare_digest(query.get("state", "").encode(), state.encode()):
            outcome = Outcome(
                False,
                "the callback's state does not match this authorization (an old or "
                "forged link); nothing was stored. Run `authproxy authorize` again",
            )
        elif (mixup := issuer_mismatch(auth, query.get("iss"))) is not None:
            outcome = Outcome(False, mixup)
        elif "error" in query:
            error = _printable(query.get("error", ""))
            detail = _printable(query.get("error_description", ""))
            if error == "access_denied":
                text = "consent was denied at the provider (error=access_denied)"
            else:
                text = f"the provider refused the authorization (error={error})"
            outcome = Outcome(False, text + (f": {detail}" if detail else ""))
        elif not query.get("code"):
            return _page(False, "This callback carries neither a code nor an error.", 400)
        else:
            outcome = await exchange(query["code"])
        text = outcome.message[0].upper() + outcome.message[1:] + "."
        resp = _page(outcome.ok, text, 200 if outcome.ok else 400)
        # Send the page before the command ends and the listener goes away.
        await resp.prepare(request)
        await resp.write_eof()
        if not done.done():
            done.set_result(outcome)
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", callback)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            _fail(f"cannot listen on {host}:{port} for the callback: {exc.strerror or exc}")
            return EXIT_FAIL
        _say(f"Authorize route {route.name}: open this URL in a browser and approve access:")
        _say("")
        _say(f"    {url}")
        _say("")
        _say(f"Waiting up to {timeout:.0f}s for the callback on {auth.redirect_uri} ...")
        if open_browser:
            import webbrowser

            await asyncio.get_running_loop().run_in_executor(None, webbrowser.open, url)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            _fail(
                f"no callback within {timeout:.0f}s; nothing was stored. Run "
                f"`authproxy authorize {route.name}` again and approve within the time "
                "(--timeout sets it)"
            )
            return EXIT_FAIL
    finally:
        await runner.cleanup()
    if outcome.ok:
        _say(outcome.message)
        return EXIT_OK
    _fail(outcome.message)
    return EXIT_FAIL


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
