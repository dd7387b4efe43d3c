"""The HTTP client of the token endpoints, on the proxy's own lean client.

A token request is rare (once per token lifetime) and small: one POST, one JSON
answer of a few KiB. It goes through :class:`proxy.http1.Pool`, the
httptools client the hot path uses, rather than aiohttp's ClientSession: a
process that serves the proxy port then never imports aiohttp, which was a
third of its memory (14 MiB of 44 MiB RSS idle; see docs/design-decisions.md).

Each request uses a connection of its own, closed after the answer
(``Connection: close``). Keeping a connection for the next token, minutes away,
would only find it closed by the provider; a POST on a stale connection cannot
be sent again safely, and would fail one token fetch for nothing.

What the client does not do, on purpose: follow redirects (a token request is
never redirected: a 3xx is the provider's error), read proxy settings from the
environment (only the route's ``egress_proxy`` setting, :mod:`proxy.http1.egress`,
sends it through a proxy), keep cookies, or ask for compressed answers. An
answer compressed anyway (gzip, deflate) is inflated, bounded like any other.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from yarl import URL

from proxy import __version__
from proxy.http1.egress import EgressConfig
from proxy.http1.errors import ProtocolError, Timeout, TooLarge
from proxy.http1.pool import Pool
from proxy.http1.tls import client_context
from proxy.http1.tunnel import Tunnel

USER_AGENT = f"authproxy/{__version__}"


class Refused(ProtocolError):
    """The client will not send this request or take this answer (not an http(s)
    URL, an unknown content coding); ``detail`` says why."""


@dataclass(frozen=True)
class Answer:
    """A token endpoint's answer: status, headers (lowercased names, first value
    of each) and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class TokenClient:
    """Sends token requests for one route.

    ``ssl_context`` is the route's TLS settings (its CA file, client certificate,
    ``verify: false``), or None for the system's trust store. ``timeout`` bounds a
    whole exchange, connecting included; ``connect_timeout`` the connecting alone.
    ``egress`` is the route's ``egress_proxy`` setting (None: direct).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        timeout: float,
        connect_timeout: float,
        egress: EgressConfig | None = None,
    ) -> None:
        self._ssl = ssl_context
        self._egress = egress
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self._pools: set[Pool] = set()

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = client_context()
        return self._ssl

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        limit: int,
    ) -> Answer:
        """One exchange; its answer read whole, up to ``limit`` bytes of body.

        Raises the transport's errors (:mod:`proxy.http1.errors`; :class:`Refused`
        for a request or answer it will not take). ``headers`` must not contain line breaks
        (:class:`ValueError` otherwise): they come from the config and the
        provider's previous answers, never from a proxied request.
        """
        u = URL(url)
        if u.scheme not in ("http", "https") or not u.raw_host:
            raise Refused("not an http(s) URL", detail="not an http(s) URL")
        tls = u.scheme == "https"
        port = u.port or (443 if tls else 80)
        via = self._egress.proxy_for(u.scheme, u.raw_host, port) if self._egress else None
        pool = Pool(
            u.raw_host,
            port,
            ssl_context=self._tls() if tls else None,
            connect_timeout=self.connect_timeout,
            opener=Tunnel(via) if via is not None else None,
        )
        head = _head(method, u, headers, body)
        self._pools.add(pool)
        try:
            async with asyncio.timeout(self.timeout):
                resp = await pool.request(method, head, body)
                try:
                    fields: dict[str, str] = {}
                    for name, value in resp.headers:
                        fields.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
                    length = fields.get("content-length", "")
                    if length.isdigit() and int(length) > limit:
                        raise _too_large(resp.status)
                    try:
                        raw = await resp.read_all(limit)
                    except TooLarge:
                        raise _too_large(resp.status) from None
                finally:
                    resp.close()
        except TimeoutError:
            raise Timeout(f"no answer within {self.timeout:g}s") from None
        finally:
            pool.close()
            self._pools.discard(pool)
        coding = fields.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raw = _inflate(raw, coding, limit, resp.status)
        return Answer(resp.status, fields, raw)

    async def close(self) -> None:
        """Abort exchanges still running (the route is being closed)."""
        for pool in list(self._pools):
            pool.close()
        self._pools.clear()


def _head(method: str, u: URL, headers: Mapping[str, str], body: bytes | None) -> bytes:
    lines = [f"{method} {u.raw_path_qs or '/'} HTTP/1.1", f"Host: {u.host_port_subcomponent}"]
    given = {name.lower() for name in headers}
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\x00"):
            raise ValueError(f"header {name} contains a line break")
        lines.append(f"{name}: {value}")
    if "user-agent" not in given:
        lines.append(f"User-Agent: {USER_AGENT}")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _inflate(raw: bytes, coding: str, limit: int, status: int) -> bytes:
    if coding not in ("gzip", "x-gzip", "deflate"):
        why = f"answer in an unknown content coding ({coding[:20]})"
        raise Refused(why, detail=why)
    # 47: gzip or zlib header, detected; deflate answers without a zlib header exist too
    wbits = 47 if coding != "deflate" or raw[:1] == b"\x78" else -15
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error:
        why = "answer could not be decompressed"
        raise Refused(why, detail=why) from None
    if len(out) > limit:
        raise _too_large(status)
    return out


def _too_large(status: int) -> TooLarge:
    return TooLarge(f"the answer ({status}) is larger than the limit", answer=status)


__all__ = ["Answer", "Refused", "TokenClient", "USER_AGENT"]
