"""``authproxy healthcheck``: ask the admin port of a running authproxy whether
it is alive (``/healthz``) or ready (``/readyz``). For Docker's ``HEALTHCHECK``
and other probes that run a command: exit 0 on a 200, 1 on anything else.

The admin address comes from the config (``-c``, ``$AUTHPROXY_CONFIG``,
``./config.yaml``), as for every other command. An address that listens on every
interface (``0.0.0.0``, ``[::]``) is asked on the loopback of its family
(``127.0.0.1``, ``[::1]``), which it includes. No proxy is needed on the path:
this is one HTTP/1.1 request on a plain socket, with one deadline for all of it.
A config that cannot be read is 1 as well: Docker reserves 2.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from proxy.cli.common import load
from proxy.config import Listen
from proxy.exit_codes import EXIT_FAIL, EXIT_OK

#: the default deadline: well inside Docker's default --timeout of 30 s
TIMEOUT = 2.0
#: the loopback address to ask for a listener on every interface of its family
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def command(args: argparse.Namespace) -> int:
    config = load(args.config)
    if config is None:
        return EXIT_FAIL
    admin = config.admin_listen
    if admin is None:
        _fail("admin_listen is off in this config: there is no /healthz to ask")
        return EXIT_FAIL
    path = "/readyz" if args.ready else "/healthz"
    where = f"{_url(admin)}{path}"
    try:
        status = probe(admin, path, args.timeout)
    except OSError as exc:
        _fail(f"{where}: {_reason(exc)}")
        return EXIT_FAIL
    if status != 200:
        _fail(f"{where} answered {status}")
        return EXIT_FAIL
    print(f"authproxy healthcheck: {where} answered 200")
    return EXIT_OK


def target(admin: Listen) -> str | tuple[str, int]:
    """The address to connect to for a server listening at ``admin``."""
    if admin.path is not None:
        return admin.path
    return (_ANY.get(admin.host, admin.host), admin.port)


def probe(admin: Listen, path: str, timeout: float) -> int:
    """``GET path`` on the admin port at ``admin``: the answer's status code.
    Raises OSError (TimeoutError included) when there is no answer in ``timeout``."""
    deadline = time.monotonic() + timeout
    where = target(admin)
    if isinstance(where, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(where)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection(where, timeout=timeout)
    with sock:
        request = f"GET {path} HTTP/1.1\r\nHost: {_authority(admin)}\r\nConnection: close\r\n\r\n"
        sock.settimeout(_left(deadline))
        sock.sendall(request.encode("ascii"))
        return _status(sock, deadline)


def _status(sock: socket.socket, deadline: float) -> int:
    """The status code of the answer's status line, read before ``deadline``."""
    head = b""
    while b"\r\n" not in head:
        sock.settimeout(_left(deadline))
        chunk = sock.recv(1024)
        if not chunk:
            raise ConnectionError("the connection closed before an answer")
        head += chunk
        if len(head) > 8192:
            break
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ConnectionError("the answer is not HTTP")
    return int(parts[1])


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _authority(admin: Listen) -> str:
    """``host:port`` as the Host header and the URL in messages write it."""
    where = target(admin)
    if isinstance(where, str):
        return "localhost"
    host, port = where
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _url(admin: Listen) -> str:
    if admin.path is not None:
        return f"unix:{admin.path}"
    return f"http://{_authority(admin)}"


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return exc.strerror or str(exc) or type(exc).__name__


def _fail(text: str) -> None:
    print(f"authproxy healthcheck: {text}", file=sys.stderr)
