"""systemd's readiness protocol (sd_notify(3)), without libsystemd.

``authproxy serve`` tells the service manager ``READY=1`` once its listeners
are bound and ``STOPPING=1`` when a stop begins, so that a ``Type=notify`` unit
is "started" when connections can be accepted, not when the process forked.
The protocol is one datagram per message on the AF_UNIX socket named by
``$NOTIFY_SOCKET``: a path, or an abstract name written with a leading ``@``.
Without ``$NOTIFY_SOCKET`` (not under systemd) nothing is sent.

Under ``serve --workers N`` the supervisor is the unit's main process, the only
one systemd listens to (``NotifyAccess=main``). It gives the workers a
``$NOTIFY_SOCKET`` of its own, a :class:`Relay`, which knows each sender's pid
from the kernel (``SO_PASSCRED``); the supervisor says ``READY=1`` once every
running worker has.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Iterable, Mapping, MutableMapping

log = logging.getLogger("authproxy")

ENV = "NOTIFY_SOCKET"
#: how long a send may block before the message is given up (a full queue)
SEND_TIMEOUT = 1.0
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


def address(name: str) -> str:
    """The socket address ``$NOTIFY_SOCKET`` names: ``@name`` is abstract."""
    return "\0" + name[1:] if name.startswith("@") else name


def notify(*states: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``states`` (``"READY=1"``, ...) as one message; whether it was sent.

    Never raises: a service manager that cannot be told must not stop the proxy.
    """
    name = (os.environ if environ is None else environ).get(ENV)
    if not name or not hasattr(socket, "AF_UNIX"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto("\n".join(states).encode(), address(name))
    except OSError as exc:
        log.warning(
            "cannot notify the service manager at $NOTIFY_SOCKET",
            extra={"notify_socket": name, "error": exc.strerror or str(exc)},
        )
        return False
    return True


class Relay:
    """The workers' notify socket: which of them have said ``READY=1``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        #: pids that said READY=1
        self.ready: set[int] = set()
        #: READY=1 went to the service manager
        self.told = False

    @classmethod
    def for_workers(cls, env: MutableMapping[str, str], directory: str) -> Relay | None:
        """Under systemd (``$NOTIFY_SOCKET`` in ``env``), a relay in ``directory``,
        with the workers' ``env`` pointed at it; else None, and ``env`` without it."""
        if not env.get(ENV) or not hasattr(socket, "SO_PASSCRED"):
            env.pop(ENV, None)
            return None
        relay = cls(os.path.join(directory, "notify"))
        env[ENV] = relay.path
        return relay

    def receive(self) -> None:
        """Read every waiting message; note the senders of ``READY=1``."""
        space = socket.CMSG_SPACE(_UCRED.size)
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, space)
            except (BlockingIOError, InterruptedError):
                return
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
                    if b"READY=1" in data.split(b"\n"):
                        self.ready.add(pid)

    def all_ready(self, pids: Iterable[int]) -> bool:
        """Tell the service manager ``READY=1`` once each of ``pids`` has said it;
        whether that is done (now or before)."""
        self.receive()
        pids = set(pids)
        if not self.told and pids and self.ready.issuperset(pids):
            self.told = True
            notify("READY=1")
        return self.told

    def close(self) -> None:
        self.sock.close()


__all__ = ["ENV", "Relay", "address", "notify"]
