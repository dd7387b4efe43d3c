"""Flow control, shared by the server's and the client's connections.

Reading pauses while much of a received body waits to be read (``HIGH_WATER``) and
resumes once the reader caught up (``LOW_WATER``); writing waits while the transport
says its buffer is full (``pause_writing``) until it drained. A connection that is
lost wakes a writer waiting to drain, which then gets the connection's own error.
A reader waits in :meth:`Flow.wait` until the parser or the transport has news
(:meth:`Flow._wake`).
"""

from __future__ import annotations

import asyncio

#: pause reading from a peer when this much of its body is unread
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Flow(asyncio.Protocol):
    """Both directions' flow control for one connection (a base of its protocol)."""

    transport: asyncio.Transport | None
    _loop: asyncio.AbstractEventLoop | None

    def __init__(self) -> None:
        self.transport = None
        self._loop = None
        #: the connection is gone (closed by either side)
        self.lost = False
        self.read_paused = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        #: a reader waiting for news (a body chunk, the end, an error)
        self._waiter: asyncio.Future[None] | None = None

    def gone(self) -> Exception:
        """The error a writer gets once the connection is lost."""
        return ConnectionResetError("the connection was closed")

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        # Kept from connection_made: asyncio.get_running_loop() is a getpid() syscall.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    # -- writing --------------------------------------------------------------

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        _resolve(self._drain)

    def _wake_writer(self) -> None:
        """The connection was lost: a writer waiting to drain must not wait forever."""
        _resolve(self._drain)

    async def drain(self) -> None:
        """Until the transport can take more; raises :meth:`gone` once lost."""
        if self.write_paused and not self.lost:
            self._drain = self._get_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None
        if self.lost:
            raise self.gone()

    # -- reading --------------------------------------------------------------

    def _wake(self) -> None:
        """News for the reader: a body chunk, the end of a message, an error."""
        _resolve(self._waiter)

    async def wait(self) -> None:
        """Until :meth:`_wake` (the parser or the transport has news)."""
        self._waiter = self._get_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def pause_reading(self) -> None:
        if self.transport is not None and not self.lost and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.lost:
            self.read_paused = False
            if self.transport is not None:
                self.transport.resume_reading()


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Interrupted(Exception):
    """A reader was told to stop waiting for more of a body (the answer came early)."""


__all__ = ["HIGH_WATER", "LOW_WATER", "Flow", "Interrupted"]
