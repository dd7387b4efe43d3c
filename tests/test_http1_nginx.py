"""Issue 12: a differential test against nginx, with the h11 referee as both upstreams.

Each odd request of the corpus goes to nginx (a reverse proxy to the referee, configured
like the route: /svc/ -> /base/, one injected header) and to authproxy. authproxy must
answer as nginx does, or more strictly:
- it never forwards what nginx refuses, and what both forward reaches the referee
  identically (method, target, body bytes, complete or not);
- where it refuses what nginx forwards, the case is listed in ``STRICTER`` with the
  reason (docs/security.md copies this table), and the refusal is a JSON contract error;
- it never hangs where nginx answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from bench.procs import find_tool
from proxy import config as configmod
from proxy.app import create_app
from tests.referee import Referee
from tests.referee_client import ROUTE, Answers, open_client, port_of, read_answers

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(find_tool("nginx") is None, reason="needs nginx (apt-get install nginx)"),
]

H = b"Host: a\r\n"
CHUNKED_BODY = b"3\r\nabc\r\n0\r\n\r\n"
GET_NEXT = b"GET /svc/next HTTP/1.1\r\n" + H + b"\r\n"

#: case -> (the bytes sent, how many answers to read at most)
CORPUS: dict[str, tuple[bytes, int]] = {
    "x_comment_chunked_cl": (b"POST /svc/a HTTP/1.1\r\n" + H + b"X-Comment: not chunked\r\n"
                             b"Content-Length: 3\r\n\r\na=1" + GET_NEXT, 2),
    "path_chunked_cl": (b"POST /svc/chunked-export HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n"
                        b"\r\nabc" + GET_NEXT, 2),
    "te_and_cl": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
                  b"Content-Length: 3\r\n\r\n" + CHUNKED_BODY + GET_NEXT, 2),
    "te_chunked_chunked": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, "
                           b"chunked\r\n\r\n" + CHUNKED_BODY, 1),
    "te_leading_space_line": (b"POST /svc/a HTTP/1.1\r\n" + H + b" Transfer-Encoding: chunked\r\n"
                              b"Content-Length: 3\r\n\r\n" + CHUNKED_BODY, 1),
    "te_value_leading_space": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Transfer-Encoding:  chunked"
                               b"\r\n\r\n" + CHUNKED_BODY, 1),
    "te_xchunked": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n"
                    b"Content-Length: 3\r\n\r\nabc", 1),
    "te_chunked_tab": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\t\r\n\r\n"
                       + CHUNKED_BODY, 1),
    "te_identity": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n"
                    b"Content-Length: 3\r\n\r\nabc", 1),
    "te_http10": (b"POST /svc/a HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY + GET_NEXT, 2),
    "dup_cl_same": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3"
                    b"\r\n\r\nabc", 1),
    "dup_cl_different": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n"
                         b"Content-Length: 4\r\n\r\nabcd", 1),
    "cl_list": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", 1),
    "cl_plus_sign": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 1),
    "cl_negative": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\nabc", 1),
    "chunk_size_overflow": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
                            b"\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n", 1),
    "chunk_extension": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                        b"3;ext=1\r\nabc\r\n0\r\n\r\n", 1),
    "obs_fold": (b"GET /svc/a HTTP/1.1\r\n" + H + b"X-Folded: one\r\n two\r\n\r\n", 1),
    "bare_lf": (b"GET /svc/a HTTP/1.1\nHost: a\nX-A: b\n\n", 1),
    "space_before_colon": (b"GET /svc/a HTTP/1.1\r\n" + H + b"X-A : b\r\n\r\n", 1),
    "nul_in_value": (b"GET /svc/a HTTP/1.1\r\n" + H + b"X-A: b\x00c\r\n\r\n", 1),
    "http10_keepalive": (b"GET /svc/a HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\n"
                         b"GET /svc/b HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\n", 2),
    "http10_no_host": (b"GET /svc/a HTTP/1.0\r\n\r\n", 1),
    "absolute_form": (b"GET http://a/svc/a HTTP/1.1\r\n" + H + b"\r\n", 1),
    "connect": (b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n", 1),
    "missing_host": (b"GET /svc/a HTTP/1.1\r\nX-A: b\r\n\r\n", 1),
    "duplicate_host": (b"GET /svc/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 1),
    "long_request_line": (b"GET /svc/" + b"a" * 40_000 + b" HTTP/1.1\r\n" + H + b"\r\n", 1),
    "long_header": (b"GET /svc/a HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 40_000 + b"\r\n\r\n", 1),
    "upgrade_h2c_cl": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Connection: Upgrade, HTTP2-Settings\r\n"
                       b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 3"
                       b"\r\n\r\nabc", 1),
    "upgrade_h2c_chunked": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\n"
                            b"Upgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY,
                            1),
    "request_trailers": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n0\r\nX-Late: t\r\n\r\n", 1),
    "expect_http10": (b"POST /svc/a HTTP/1.0\r\n" + H + b"Expect: 100-continue\r\n"
                      b"Content-Length: 3\r\n\r\nabc", 1),
    "lowercase_method": (b"get /svc/a HTTP/1.1\r\n" + H + b"\r\n", 1),
    "http_2_0_line": (b"GET /svc/a HTTP/2.0\r\n" + H + b"\r\n", 1),
    "pipelined_cl": (b"POST /svc/a HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc" + GET_NEXT,
                     2),
}  # fmt: skip

#: cases authproxy refuses although nginx forwards them, on purpose: case -> reason
STRICTER: dict[str, str] = {
    "absolute_form": "a forward-proxy request on a reverse-proxy port (contract: 400 bad_request)",
    "bare_lf": "lines must end in CRLF (llhttp strict); RFC 9112 2.2 lets a recipient refuse a "
    "bare LF, and a parser that accepts it where the next hop does not can be desynced",
    "upgrade_h2c_cl": "Upgrade with a body may be refused with JSON 501 (issue 12 item 5) "
    "instead of forwarding the body with Upgrade stripped, as nginx does",
    "upgrade_h2c_chunked": "as upgrade_h2c_cl",
}
#: STRICTER cases where forwarding exactly as nginx does is as good as refusing
EITHER = {"upgrade_h2c_cl", "upgrade_h2c_chunked"}


@dataclass
class Outcome:
    """What one proxy did with one case."""

    answers: Answers
    forwarded: list[tuple[bytes, bytes, bytes, bool]]  # method, target, body, complete

    @property
    def statuses(self) -> list[int]:
        return [a.status for a in self.answers.answers]


@dataclass
class Rig:
    ref: Referee
    authproxy: int
    nginx: int


def _nginx_conf(d: Path, port: int, upstream: int) -> str:
    user = ""
    if os.geteuid() == 0:  # root's workers would run as "nobody", who cannot read d
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    return f"""{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    upstream referee {{ server 127.0.0.1:{upstream}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port};
        location /svc/ {{
            proxy_pass http://referee/base/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Api-Key k-123;
        }}
    }}
}}
"""


async def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            assert proc.poll() is None, "nginx exited"
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            await asyncio.sleep(0.05)  # polling a port that is not listening yet


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    ref = await Referee().start()
    cfg = configmod.parse(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n" + ROUTE.format(url=ref.url), {}
    )
    proxy = create_app(cfg)
    await proxy.start()
    d = tmp_path_factory.mktemp("nginx")
    port = _free_port()
    conf = d / "nginx.conf"
    conf.write_text(_nginx_conf(d, port, ref.port))
    nginx = find_tool("nginx") or "nginx"
    argv = [nginx, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log"), "-g", "daemon off;"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await _wait_port(port, proc)
        yield Rig(ref, port_of(proxy.url), port)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        await proxy.stop()
        await ref.stop()


async def _send(rig: Rig, port: int, data: bytes, n: int) -> Outcome:
    before = len(rig.ref.log)
    reader, writer = await open_client(port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        # no half-close: nginx takes a client's EOF for an abort and drops the request
        methods = ["HEAD" if data.startswith(b"HEAD") else "GET"] * n
        answers = await read_answers(reader, methods, timeout=3)
    finally:
        writer.transport.abort()
    seen = rig.ref.log[before:]
    return Outcome(answers, [(r.method, r.target, r.body, r.complete) for r in seen])


def _refused_by_authproxy(out: Outcome) -> bool:
    if not out.answers.answers:
        return out.answers.closed and not out.answers.timed_out
    last = out.answers.answers[len([f for f in out.forwarded if f[3]]) :]
    return bool(last) and all(
        a.status >= 400 and a.error_code is not None and a.json()["error"]["code"] == a.error_code
        for a in last
    )


@pytest.mark.parametrize("case", list(CORPUS))
async def test_answers_as_nginx_does_or_stricter(rig: Rig, case: str) -> None:
    data, n = CORPUS[case]
    theirs = await _send(rig, rig.nginx, data, n)
    ours = await _send(rig, rig.authproxy, data, n)
    if _refused_by_authproxy(ours):
        # A streamed body that turns out malformed halfway: the head went out already, the
        # upstream saw an incomplete request and its connection closed. nginx buffers the
        # body first (proxy_request_buffering on) and so refuses before forwarding.
        ours.forwarded = [f for f in ours.forwarded if f[3]]
    detail = (
        f"{case}: nginx {theirs.statuses} {theirs.forwarded}, ours {ours.statuses} {ours.forwarded}"
    )
    if not theirs.answers.timed_out:
        assert not ours.answers.timed_out, "authproxy hangs where nginx answers: " + detail
    # never forward what nginx refused, and what both forwarded arrived identically
    assert ours.forwarded == theirs.forwarded[: len(ours.forwarded)], detail
    if len(ours.forwarded) < len(theirs.forwarded):
        assert _refused_by_authproxy(ours), "forwarded less, without a JSON refusal: " + detail
        assert case in STRICTER, "stricter than nginx: list it in STRICTER with why: " + detail
    elif case in STRICTER and case not in EITHER:
        pytest.fail(f"{case} is listed in STRICTER but authproxy forwards it like nginx: {detail}")
    for answer in ours.answers.answers:  # the referee answers 200: these are the proxy's own
        if answer.status >= 400:
            assert answer.error_code and answer.json()["error"]["code"] == answer.error_code
    if ours.answers.error is not None:
        pytest.fail(f"h11 could not parse authproxy's answer ({ours.answers.error}): {detail}")
