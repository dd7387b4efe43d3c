"""Authorization server discovery (RFC 8414; OpenID Connect Discovery 1.0).

A route whose auth sets ``discovery_url``, or ``issuer`` without ``token_url``,
takes its ``token_endpoint`` (and ``authorization_endpoint``, for ``authorize``)
from the server's metadata. The document is read once when the config is
loaded, at start-up and on every reload (``config.load`` runs in a thread then),
never per token request. Unreachable, not JSON, naming another issuer, or
lacking the endpoints: a config error on the key that asked for it.

With ``issuer``, ``/.well-known/openid-configuration`` under it is read first,
then RFC 8414's ``/.well-known/oauth-authorization-server`` (inserted before the
issuer's path). RFC 8414 3.3: the document's ``issuer`` must be the configured one.
"""

from __future__ import annotations

import functools
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace

from yarl import URL

from proxy.config.model import ClientCredentialsAuth, JwtBearerAuth, RefreshTokenAuth, RouteConfig
from proxy.http1.egress import EgressConfig
from proxy.http1.tls import client_context

#: a metadata document, as JSON gave it
Document = dict[str, object]

#: a metadata document is a few KiB
MAX_DOCUMENT = 256 * 1024


class DiscoveryError(Exception):
    """The metadata could not be read or is unusable; the message says why."""


def candidates(issuer: str) -> list[str]:
    """The metadata URLs for ``issuer``, in the order they are tried."""
    u = URL(issuer.rstrip("/"))
    path = u.raw_path if u.raw_path != "/" else ""
    root = u.with_path("/", encoded=True)
    return [
        issuer.rstrip("/") + "/.well-known/openid-configuration",
        str(root.with_path(f"/.well-known/oauth-authorization-server{path}", encoded=True)),
    ]


def fetch_document(
    url: str,
    *,
    timeout: float,
    context: ssl.SSLContext | None,
    egress: EgressConfig | None = None,
) -> Document:
    """GET ``url`` and its JSON object; :class:`DiscoveryError` otherwise."""
    # No proxy from the environment and no redirects, as for token requests; the
    # route's egress_proxy if it has one (https through CONNECT, as proxy.http1.tunnel does).
    proxies = egress.urllib_proxies(url) if egress is not None else {}
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler(proxies), urllib.request.HTTPSHandler(context=context)
    )
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with opener.open(request, timeout=timeout) as resp:
            raw = resp.read(MAX_DOCUMENT + 1)
    except urllib.error.HTTPError as exc:
        raise DiscoveryError(f"{url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if proxies and egress is not None:
            via = egress.proxy_for(*_origin(url))
            where = f" through egress proxy {via.authority}" if via is not None else ""
            raise DiscoveryError(f"{url} is unreachable{where} ({reason})") from None
        raise DiscoveryError(f"{url} is unreachable ({reason})") from None
    if len(raw) > MAX_DOCUMENT:
        raise DiscoveryError(f"{url} sent more than {MAX_DOCUMENT // 1024} KiB")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise DiscoveryError(f"{url} did not answer a JSON document") from None
    if isinstance(doc, dict):
        return doc
    raise DiscoveryError(f"{url} did not answer a JSON object")


def _origin(url: str) -> tuple[str, str, int]:
    u = URL(url)
    return u.scheme, u.raw_host or "", u.port or (443 if u.scheme == "https" else 80)


def metadata(
    issuer: str | None,
    discovery_url: str | None,
    *,
    timeout: float,
    context: ssl.SSLContext | None,
    egress: EgressConfig | None = None,
) -> Document:
    """The authorization server's metadata, checked against ``issuer`` when given."""
    urls = [discovery_url] if discovery_url else candidates(issuer or "")
    errors: list[str] = []
    for url in urls:
        try:
            doc = fetch_document(url, timeout=timeout, context=context, egress=egress)
        except DiscoveryError as exc:
            errors.append(str(exc))
            continue
        named = doc.get("issuer")
        if issuer and (not isinstance(named, str) or named.rstrip("/") != issuer.rstrip("/")):
            raise DiscoveryError(f"{url} names issuer {named!r}, not {issuer!r} (RFC 8414 3.3)")
        return doc
    raise DiscoveryError("; ".join(errors))


def _endpoint(doc: Document, name: str) -> str | None:
    value = doc.get(name)
    if isinstance(value, str) and URL(value).scheme in ("http", "https") and URL(value).host:
        return value
    return None


def discover(routes: list[RouteConfig], error: Callable[[str, str], None]) -> list[RouteConfig]:
    """``routes`` with discovered endpoints filled in; problems go to ``error``."""
    out: list[RouteConfig] = []
    seen: dict[tuple[str | None, str | None], Document | str] = {}
    for route in routes:
        auth = route.auth
        if not isinstance(auth, ClientCredentialsAuth | RefreshTokenAuth | JwtBearerAuth):
            out.append(route)
            continue
        url = auth.discovery_url
        if not url and not (auth.issuer and not auth.token_url):
            out.append(route)
            continue
        key_path = f"routes.{route.name}.auth.{'discovery_url' if url else 'issuer'}"
        source = (auth.issuer, url)
        if source not in seen:
            seen[source] = _read(route, auth.issuer, url)
        doc = seen[source]
        if isinstance(doc, str):
            error(key_path, f"discovery failed: {doc}")
            out.append(route)
        else:
            out.append(_filled(route, auth, doc, functools.partial(error, key_path)))
    return out


def _read(route: RouteConfig, issuer: str | None, url: str | None) -> Document | str:
    """The metadata document, or why it could not be had."""
    target = URL(url or issuer or "")
    ctx = client_context(route.tls) if target.scheme == "https" else None
    try:
        return metadata(
            issuer, url, timeout=route.token_timeout, context=ctx, egress=route.egress_proxy
        )
    except DiscoveryError as exc:
        return str(exc)


def _filled(
    route: RouteConfig,
    auth: ClientCredentialsAuth | RefreshTokenAuth | JwtBearerAuth,
    doc: Document,
    error: Callable[[str], None],
) -> RouteConfig:
    new = auth
    if not auth.token_url:
        token = _endpoint(doc, "token_endpoint")
        if token is None:
            error("the server's metadata has no usable token_endpoint")
        new = replace(new, token_url=token or "")
    if isinstance(new, RefreshTokenAuth) and not new.authorize_url:
        authz = _endpoint(doc, "authorization_endpoint")
        if authz is None and new.redirect_uri:
            error("the server's metadata has no usable authorization_endpoint")
        new = replace(new, authorize_url=authz)
    return route if new is auth else replace(route, auth=new)
