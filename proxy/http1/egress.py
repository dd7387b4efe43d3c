"""Egress proxy settings: which HTTP proxy, if any, a connection to an origin goes through.

Enterprise hosts often reach the internet only through a corporate HTTP proxy.
``egress_proxy`` (in ``defaults`` or per route) names it, for a route's upstream
and its token endpoint alike. The value is parsed once, here, into small frozen
values; :mod:`proxy.http1.tunnel` opens the connections.

Accepted values (see docs/design-decisions.md for why):

- absent, ``none`` or ``false``: connect directly (the default). The environment
  is ignored, as the token client always did: a variable set for some other
  program must not reroute credentials.
- ``http://[user:password@]host:port``: every connection of the route goes
  through that proxy (``${env:...}``/``${file:...}`` work inside it).
- ``env``: follow ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (or their lowercase
  spellings; uppercase wins, as in Go) of authproxy's own environment.
- a mapping: ``url`` (a URL as above, or ``env``), ``username``, ``password``
  (given apart from the URL, they need no percent-encoding) and ``no_proxy``
  (a list, or a comma-separated string).

``no_proxy`` entries, matched against the host and port being connected to (no
DNS lookups): ``*`` (everything direct), a domain (``example.com`` and
``.example.com`` both match it and its subdomains, as curl does), an IP
address, a CIDR (``10.0.0.0/8``, matched against IP-literal hosts only), each
optionally with ``:port`` (``[::1]:8443`` for IPv6). Loopback is not bypassed
implicitly (Go does that): list ``localhost,127.0.0.1`` if you want it.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,15}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")
MAPPING_KEYS = frozenset({"url", "username", "password", "no_proxy"})


class ProxyURL:
    """An HTTP proxy: where it is, and the Basic credentials to give it, if any.

    Not a dataclass on purpose: ``str()`` and ``repr()`` mask the password, and
    nothing that walks dataclass fields (``check --explain``) can reach it."""

    __slots__ = ("host", "port", "username", "_password")

    def __init__(
        self, host: str, port: int, username: str | None = None, password: str | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self._password = password

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProxyURL):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[str, int, str | None, str | None]:
        return (self.host, self.port, self.username, self._password)

    @property
    def authority(self) -> str:
        """``host:port``, as errors name the proxy (never with credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def proxy_authorization(self) -> bytes | None:
        """The ``Proxy-Authorization`` header line (RFC 7617 Basic), or None."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self._password or ''}".encode()
        return b"Proxy-Authorization: Basic " + base64.b64encode(pair) + b"\r\n"

    def url_with_credentials(self) -> str:
        """The URL with the password in it, percent-encoded: only for a client that
        takes its proxy that way (urllib, for discovery). Never log it."""
        cred = ""
        if self.username is not None:
            cred = quote(self.username, safe="")
            cred += f":{quote(self._password, safe='')}@" if self._password else "@"
        return f"http://{cred}{self.authority}"

    def __str__(self) -> str:
        cred = ""
        if self.username is not None:
            cred = f"{self.username}:***@" if self._password else f"{self.username}@"
        return f"http://{cred}{self.authority}"

    __repr__ = __str__


@dataclass(frozen=True)
class _Rule:
    """One ``no_proxy`` entry: everything, an IP network, or a domain; maybe one port."""

    any: bool = False
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    domain: str | None = None
    port: int | None = None

    def matches(self, host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
                port: int) -> bool:  # fmt: skip
        if self.any:
            return True
        if self.port is not None and self.port != port:
            return False
        if self.net is not None:
            return ip is not None and ip in self.net
        d = self.domain or ""
        return ip is None and (host == d or host.endswith("." + d))


@dataclass(frozen=True, repr=False)
class EgressConfig:
    """The egress proxy setting of one route, resolved.

    ``https`` serves https:// origins, ``http`` plain ones (they differ only when
    read from the environment); ``no_proxy`` lists the exceptions as written."""

    http: ProxyURL | None
    https: ProxyURL | None
    no_proxy: tuple[str, ...] = ()
    from_env: bool = False
    _rules: tuple[_Rule, ...] = ()

    def proxy_for(self, scheme: str, host: str, port: int) -> ProxyURL | None:
        """The proxy to reach ``scheme://host:port`` through, or None for direct."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or not self._rules:
            return proxy
        name = host.lower().rstrip(".").strip("[]")
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
        except ValueError:
            ip = None
        for rule in self._rules:
            if rule.matches(name, ip, port):
                return None
        return proxy

    def urllib_proxies(self, url: str) -> dict[str, str]:
        """``urllib.request.ProxyHandler``'s mapping for one request to ``url``:
        ``{}`` (direct) or its scheme's proxy (https is tunnelled with CONNECT)."""
        u = urlsplit(url)
        port = u.port or (443 if u.scheme == "https" else 80)
        proxy = self.proxy_for(u.scheme, u.hostname or "", port)
        return {} if proxy is None else {u.scheme: proxy.url_with_credentials()}

    def describe(self, url: str) -> str:
        """How a connection to ``url`` goes, for ``check --explain``."""
        from yarl import URL

        u = URL(url)
        port = u.port or (443 if u.scheme == "https" else 80)
        proxy = self.proxy_for(u.scheme, u.raw_host or "", port)
        if proxy is not None:
            return f"via {proxy}"
        base = self.https if u.scheme == "https" else self.http
        return "direct (no_proxy)" if base is not None else "direct"

    def view(self, endpoints: Mapping[str, str]) -> dict[str, object]:
        """What ``check --explain`` shows: the proxy (credentials masked), where the
        setting came from, the exceptions, and how each of ``endpoints`` is reached."""
        out: dict[str, object] = {}
        if self.http == self.https:
            out["proxy"] = None if self.https is None else str(self.https)
        else:
            out["https_proxy"] = None if self.https is None else str(self.https)
            out["http_proxy"] = None if self.http is None else str(self.http)
        out["from"] = "environment" if self.from_env else "config"
        out["no_proxy"] = list(self.no_proxy)
        out.update({name: self.describe(url) for name, url in endpoints.items()})
        return out

    def __repr__(self) -> str:
        return f"EgressConfig(http={self.http}, https={self.https}, no_proxy={self.no_proxy})"


def parse_proxy_url(text: str, *, scheme_optional: bool = False) -> ProxyURL:
    """``http://[user:password@]host:port`` into a :class:`ProxyURL`.

    Raises ValueError with a message that never repeats the credentials."""
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        if not scheme_optional:
            raise ValueError("must be a URL such as http://proxy.corp:3128 (no scheme given)")
        scheme, rest = "http", text
    scheme = scheme.lower()
    if scheme != "http":
        shown = f"{scheme}://" if _SCHEME.match(scheme) else "this scheme"
        more = " (TLS to the proxy itself)" if scheme == "https" else ""
        raise ValueError(
            f"{shown}{more} is not supported: give an http:// proxy (HTTPS goes through it "
            "in a CONNECT tunnel)"
        )
    userinfo, at, hostport = rest.rpartition("@")
    username = password = None
    if at:
        for char, code in (("/", "%2F"), ("@", "%40"), ("?", "%3F"), ("#", "%23")):
            if char in userinfo:
                raise ValueError(
                    f"the credentials contain an unencoded {char!r}: percent-encode it as "
                    f"{code}, or give username and password as keys of their own"
                )
        user, colon, pw = userinfo.partition(":")
        username = unquote(user, errors="strict")
        password = unquote(pw, errors="strict") if colon else None
        if not username:
            raise ValueError("has credentials without a user name")
    if hostport.endswith("/"):
        hostport = hostport[:-1]
    if any(c in hostport for c in "/?#"):
        raise ValueError("must be only scheme, host and port (no path, query or fragment)")
    host, port = _host_port(hostport)
    if port is None:
        raise ValueError("needs a port, as http://proxy.corp:3128")
    return ProxyURL(host, port, username, password)


def _host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address."""
    port_text: str | None = None
    if text.startswith("["):
        host, close, after = text[1:].partition("]")
        if not close or (after and not after.startswith(":")):
            raise ValueError("has a malformed [IPv6] host")
        port_text = after[1:] if after else None
        ipaddress.IPv6Address(host)  # ValueError names the address, which is not secret
    elif text.count(":") > 1:
        host = str(ipaddress.IPv6Address(text))
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
        if not host or not _HOSTNAME.match(host):
            raise ValueError("has no valid host name")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError("has an invalid port (1-65535)")
        port = int(port_text)
    return host.lower(), port


def parse_no_proxy(entries: list[str]) -> tuple[_Rule, ...]:
    """``no_proxy`` entries into rules; ValueError names a bad entry (not a secret)."""
    rules: list[_Rule] = []
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            rules.append(_Rule(any=True))
            continue
        if entry.startswith("*."):
            entry = entry[1:]
        try:
            if "/" in entry:
                rules.append(_Rule(net=ipaddress.ip_network(entry, strict=False)))
                continue
            host, port = _host_port(entry.lstrip("."))
        except ValueError:
            raise ValueError(
                f"no_proxy entry {raw.strip()[:80]!r} is not a host, IP or CIDR"
            ) from None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            rules.append(_Rule(domain=host.rstrip("."), port=port))
        else:
            rules.append(_Rule(net=ipaddress.ip_network(ip), port=port))
    return tuple(rules)


def _split(value: object) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        return value.split(",")
    raise ValueError("no_proxy must be a list of hosts or a comma-separated string")


def _env(environ: Mapping[str, str], name: str) -> str | None:
    # Go's order: the uppercase spelling first; an empty value counts as unset.
    return environ.get(name.upper()) or environ.get(name.lower()) or None


def from_env(environ: Mapping[str, str], no_proxy: list[str] | None = None) -> EgressConfig:
    """The proxies the environment names (``scheme_optional``: ``proxy:3128`` is
    accepted there, as curl and Go do). ValueError names the variable."""
    found: dict[str, ProxyURL | None] = {}
    for var in ("HTTPS_PROXY", "HTTP_PROXY"):
        value = _env(environ, var)
        try:
            found[var] = parse_proxy_url(value, scheme_optional=True) if value else None
        except ValueError as exc:
            raise ValueError(f"{var} (from the environment) {exc}") from None
    entries = no_proxy if no_proxy is not None else _split(_env(environ, "NO_PROXY") or "")
    try:
        rules = parse_no_proxy(entries)
    except ValueError as exc:
        raise ValueError(f"NO_PROXY (from the environment): {exc}") from None
    return EgressConfig(
        http=found["HTTP_PROXY"],
        https=found["HTTPS_PROXY"],
        no_proxy=tuple(e.strip() for e in entries if e.strip()),
        from_env=True,
        _rules=rules,
    )


def parse_setting(value: object, environ: Mapping[str, str]) -> EgressConfig | None:
    """An ``egress_proxy`` value (secrets already resolved) into its config; None
    means direct. Raises ValueError with a message fit for a config error."""
    if value is None or value is False or value in ("", "none"):
        return None
    if isinstance(value, str):
        if value.strip() == "env":
            return from_env(environ)
        proxy = parse_proxy_url(value)
        return EgressConfig(http=proxy, https=proxy)
    if not isinstance(value, dict):
        raise ValueError("must be an http:// URL, env, none, or a mapping with url")
    unknown = sorted(set(value) - MAPPING_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(MAPPING_KEYS))})")
    url = value.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ValueError("needs url: an http:// URL, or env")
    entries = _split(value["no_proxy"]) if value.get("no_proxy") is not None else None
    if url.strip() == "env":
        if "username" in value or "password" in value:
            raise ValueError("username and password go with an http:// url, not with env")
        return from_env(environ, entries)
    proxy = parse_proxy_url(url)
    user, password = value.get("username"), value.get("password")
    if user is not None or password is not None:
        if proxy.username is not None:
            raise ValueError("give the credentials in the url or as keys, not both")
        if not user:
            raise ValueError("password needs a username")
        proxy = ProxyURL(
            proxy.host, proxy.port, str(user), None if password is None else str(password)
        )
    rules = parse_no_proxy(entries or [])
    kept = tuple(e.strip() for e in entries or [] if e.strip())
    return EgressConfig(http=proxy, https=proxy, no_proxy=kept, _rules=rules)


__all__ = ["EgressConfig", "ProxyURL", "from_env", "parse_no_proxy", "parse_proxy_url",
           "parse_setting"]  # fmt: skip
