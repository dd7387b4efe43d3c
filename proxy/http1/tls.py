"""The client TLS rule, once: which context a route's connections use.

Used for a route's upstream, its token endpoint, discovery and ``authorize``.
The settings come in as a plain value (``proxy.config``'s ``TLSConfig`` fits
:class:`TLSSettings`); this module imports nothing else of the proxy.
"""

from __future__ import annotations

import ssl
from typing import Protocol


class TLSSettings(Protocol):
    """A route's ``tls`` section: the CA file, client certificate, ``verify``."""

    @property
    def verify(self) -> bool: ...
    @property
    def ca_file(self) -> str | None: ...
    @property
    def client_cert(self) -> str | None: ...
    @property
    def client_key(self) -> str | None: ...


def client_context(tls: TLSSettings | None = None) -> ssl.SSLContext:
    """A client context: the system's trust store (or ``ca_file``), certificate
    and host name checked unless ``verify`` is off, the client certificate if set."""
    if tls is None:
        return ssl.create_default_context()
    if not tls.verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
    if tls.client_cert:
        # An encrypted key must fail, never prompt on a terminal a daemon does not have.
        ctx.load_cert_chain(tls.client_cert, tls.client_key, password=_no_password)
    return ctx


def context_for(tls: TLSSettings, *, https: bool) -> ssl.SSLContext | None:
    """The route's context, built once: when its endpoint is https or any TLS
    setting is not the default; None (the system's default context, made when
    first needed) otherwise."""
    settings = (tls.ca_file, tls.client_cert, tls.client_key)
    default = tls.verify and settings == (None, None, None)
    return client_context(tls) if https or not default else None


def _no_password() -> bytes:
    return b""
