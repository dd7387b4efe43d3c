"""TLS settings (a route's ``tls``, ``token_store.tls``): parsed and checked.
:mod:`proxy.http1.tls` makes them into the client context that every connection
of the route uses.

The PEM files are loaded once while parsing, so that a bad one is a config error
on its key, not a crash at start or a failure on the first request.
"""

from __future__ import annotations

import os
import ssl

import proxy.config.fields as fields
from proxy.config.model import TLSConfig
from proxy.config.reader import Reader, build


def _no_password() -> bytes:
    return b""


def parse_tls(r: Reader, data: object, path: str) -> TLSConfig:
    d = r.section(data, path, fields.key_names(TLSConfig))
    tls = build(TLSConfig, r.read(TLSConfig, d, path))
    for key in ("ca_file", "client_cert", "client_key"):
        f = getattr(tls, key)
        if f and not os.path.isfile(f):
            r.error(f"{path}.{key}", f"file {f} does not exist")
    if tls.client_key and not tls.client_cert:
        r.error(f"{path}.client_key", "needs client_cert too")
    _check_files(r, tls, path)
    return tls


def _check_files(r: Reader, tls: TLSConfig, path: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file and os.path.isfile(tls.ca_file):
        try:
            ctx.load_verify_locations(cafile=tls.ca_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            r.error(f"{path}.ca_file", f"cannot load CA certificates from {tls.ca_file}: {exc}")
    cert, key = tls.client_cert, tls.client_key
    if cert and os.path.isfile(cert) and (not key or os.path.isfile(key)):
        try:
            ctx.load_cert_chain(cert, key, password=_no_password)
        except (ssl.SSLError, OSError, ValueError) as exc:
            r.error(
                f"{path}.client_cert",
                f"cannot load the client certificate and key ({cert}, {key or 'same file'}): {exc}",
            )
