"""A message body's framing, decided once from the parsed head, and written.

RFC 9112 section 6: a body is framed by exactly one of ``Transfer-Encoding: chunked``,
``Content-Length`` or the end of the connection (an answer only), or there is none.
The decision is made here, from what the parser reported (never by searching the
head's bytes for a word), and the same value then drives how the body is written.
"""

from __future__ import annotations

from typing import Final

#: no body at all
NONE: Final = 0
#: exactly ``length`` bytes
LENGTH: Final = 1
#: chunked transfer coding
CHUNKED: Final = 2
#: until the connection closes (an answer to an HTTP/1.0 client)
CLOSE: Final = 3

LAST_CHUNK: Final = b"0\r\n\r\n"
CHUNKED_LINE: Final = b"Transfer-Encoding: chunked\r\n"


def request_framing(length: int | None, chunked: bool, in_hand: int | None) -> tuple[int, bytes]:
    """How a forwarded request's body is framed, and the head's line that says so.

    ``length``/``chunked`` are the client's framing as parsed; ``in_hand`` is the size
    of the body when it was read whole (it is then sent with a Content-Length).
    """
    if in_hand is not None:
        return LENGTH, b"Content-Length: %d\r\n" % in_hand
    if chunked:
        return CHUNKED, CHUNKED_LINE
    if length:
        return LENGTH, b"Content-Length: %d\r\n" % length
    # Keep an explicit "Content-Length: 0" (a POST may need it).
    return NONE, b"Content-Length: 0\r\n" if length == 0 else b""


def answer_framing(method: str, status: int, length: int | None, version_10: bool) -> int:
    """How an answer's body is framed towards the client (``length`` its Content-Length)."""
    if method == "HEAD" or status < 200 or status in (204, 304):
        return NONE  # no body whatever the headers say
    if length is not None:
        return LENGTH
    return CLOSE if version_10 else CHUNKED


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def encode(framing: int, data: bytes) -> bytes:
    """``data`` as it goes on the wire under ``framing``."""
    return b"%x\r\n%b\r\n" % (len(data), data) if framing == CHUNKED else data


def end(framing: int) -> bytes:
    """What ends a body under ``framing`` (the last chunk, or nothing)."""
    return LAST_CHUNK if framing == CHUNKED else b""


__all__ = [
    "CHUNKED",
    "CLOSE",
    "LENGTH",
    "NONE",
    "answer_framing",
    "chunk",
    "encode",
    "end",
    "request_framing",
]
