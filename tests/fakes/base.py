"""Common machinery of the strict fake providers.

A fake provider is an aiohttp application with one or more *token endpoints*
(login, refresh, code exchange, ...) and a *protected API* (every other path,
unless the provider narrows it).  Everything a test may want to count or grep is
recorded on the provider object:

- ``token_requests``: every hit on a token endpoint, whatever its outcome
  (faulted, rejected, wrong method, ...); ``token_log`` holds one
  :class:`TokenRequest` per hit, with the answer's status filled in.
- ``logins`` / ``refreshes``: *successful* grants (a new access token issued by a
  login-like grant, or by a refresh grant).
- ``api_requests`` and ``api_log``: every hit on the protected API.
- ``issued``: every access token and refresh token ever handed out (tests grep
  logs for these to prove that no secret leaks).

Expiry decisions use ``provider.clock.time()`` only, so a test passing a
:class:`proxy.clock.ManualClock` can expire tokens by ``clock.advance()``.
A token is valid while ``clock.time() < expires_at``, where ``expires_at`` is
exactly the instant the provider announced (``expiry``, ``expires_in``, ISO
timestamp).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import re
import secrets
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web

from proxy.clock import Clock, SystemClock

TokenHandler = Callable[[web.Request, bytes, "TokenRequest"], Awaitable[web.StreamResponse]]
ApiHandler = Callable[[web.Request, "AccessToken"], Awaitable[web.StreamResponse]]

_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([^\s]+)\s*$")
_CHUNK = 64 * 1024


@dataclass
class Fault:
    """A misbehaviour of an endpoint, for one request (or every request).

    - ``status``: the status answered; ``None`` means "answer normally", which
      with ``delay`` makes a slow but correct endpoint.
    - ``body`` / ``content_type`` / ``headers``: the answer.
    - ``delay``: real seconds to wait before answering (or resetting).
    - ``reset``: abort the connection without answering anything.
    - ``size``: send a body of exactly that many bytes (``body`` repeated, or
      ``b"x"``), streamed with a Content-Length, e.g. ``10 * 1024 * 1024``.
    """

    status: int | None = 500
    body: bytes = b"<html><body><h1>500 Internal Server Error</h1></body></html>"
    content_type: str = "text/html"
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    size: int | None = None


@dataclass
class TokenRequest:
    """One hit on a token endpoint."""

    endpoint: str  # "authenticate", "refresh", "access_token", "connect", "login", "token", ...
    method: str
    path: str  # raw path as received, without the query string
    query: str  # raw query string
    headers: dict[str, str]  # lowercase names; repeated headers joined with ", "
    body: bytes
    content_type: str
    peer: str | None
    time: float  # clock.time() on arrival
    status: int | None = None  # answered status; None when the connection was reset
    grant: str | None = None  # what the request turned out to be: "login", "refresh", ...
    fault: Fault | None = None


@dataclass
class ApiRequest:
    """One hit on the protected API."""

    method: str
    path: str  # raw path as received, without the query string
    query: str  # raw query string
    headers: dict[str, str]  # lowercase names; repeated headers joined with ", "
    raw_headers: list[tuple[str, str]]  # as received, in order, with repeats
    peer: str | None
    time: float
    body_len: int = 0
    body_sha256: str = ""
    status: int | None = None
    token_id: str | None = None  # jti of the accepted access token
    fault: Fault | None = None


@dataclass
class AccessToken:
    """An issued access token and its server-side state."""

    token: str
    jti: str
    issued_at: float
    expires_at: float
    claims: dict[str, Any]
    grant: str  # "login", "refresh", "authorization_code", "client_credentials", ...
    family: str | None = None  # ties tokens to the login (session) they descend from
    revoked: bool = False
    revoked_reason: str | None = None

    def valid_at(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at


@dataclass
class RefreshToken:
    """An issued refresh token and its server-side state."""

    token: str
    issued_at: float
    expires_at: float | None  # None: does not expire
    family: str  # the login/consent it descends from
    client_id: str | None = None
    scope: str = ""
    used: bool = False  # rotated away: presenting it again is a reuse
    revoked: bool = False
    revoked_reason: str | None = None

    def usable_at(self, now: float) -> bool:
        return (
            not self.used
            and not self.revoked
            and (self.expires_at is None or now < self.expires_at)
        )


def header_dict(request: web.BaseRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def split_raw_target(request: web.BaseRequest) -> tuple[str, str]:
    """The raw request target, split into (path, query), both undecoded."""
    target = request.raw_path
    path, _, query = target.partition("?")
    return path, query


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        content_type="application/json",
        headers=dict(headers or {}),
    )


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None if it is not valid JSON or not an object."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def bearer_token(request: web.BaseRequest) -> str | None:
    """The token of exactly one ``Authorization: Bearer <token>`` header, else None."""
    values = request.headers.getall("Authorization", [])
    if len(values) != 1:
        return None
    match = _BEARER.match(values[0])
    return match.group(1) if match else None


def ip_allowed(peer: str | None, allowlist: list[str] | set[str] | tuple[str, ...]) -> bool:
    """Empty allow-list: everyone. Otherwise the peer must be in one of the addresses/CIDRs."""
    if not allowlist:
        return True
    if peer is None:
        return False
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(entry, strict=False) for entry in allowlist)


class FakeProvider:
    """Base class; subclasses declare token endpoints and their own error style."""

    #: header/claim issuer used in JWTs
    issuer: str = "https://fake.invalid/"

    def __init__(self, clock: Clock | None = None, *, jwt_secret: str | None = None) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.jwt_secret: str = jwt_secret or secrets.token_hex(32)
        self.token_requests = 0
        self.logins = 0
        self.refreshes = 0
        self.api_requests = 0
        self.token_log: list[TokenRequest] = []
        self.api_log: list[ApiRequest] = []
        self.issued: list[str] = []
        self.access_tokens: dict[str, AccessToken] = {}
        #: refresh tokens by value (empty for providers without refresh tokens)
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.faults: list[Fault] = []
        self.always_fault: Fault | None = None
        self.api_faults: list[Fault] = []
        self.always_api_fault: Fault | None = None
        #: replaces the JSON echo of the protected API when set (after auth succeeded)
        self.api_handler: ApiHandler | None = None
        self.base_url: str | None = None

    # ----------------------------------------------------------- subclass hooks

    def token_endpoints(self) -> dict[str, tuple[str, TokenHandler]]:
        """path -> (endpoint name, handler). Every method reaches the handler."""
        raise NotImplementedError

    def extra_routes(self, app: web.Application) -> None:
        """Non-token, non-API routes (e.g. an OAuth2 authorize page)."""

    def is_api_path(self, path: str) -> bool:
        return True

    def api_unauthorized(self, reason: str) -> web.StreamResponse:
        """The provider's own 401 for the protected API."""
        return json_response({"error": "unauthorized", "message": reason}, 401)

    def api_not_found(self, path: str) -> web.StreamResponse:
        return json_response({"error": "not_found"}, 404)

    async def api_precheck(self, request: web.Request) -> web.StreamResponse | None:
        """A rejection to answer before the bearer is even looked at, or None."""
        return None

    def check_token(self, token: AccessToken, request: web.Request) -> web.StreamResponse | None:
        """Provider-specific checks of an otherwise valid token: a rejection, or None."""
        return None

    # ----------------------------------------------------------- tokens

    def now(self) -> float:
        return self.clock.time()

    def issue_access_token(
        self,
        *,
        expires_at: float,
        grant: str,
        claims: Mapping[str, Any] | None = None,
        family: str | None = None,
    ) -> AccessToken:
        """Sign and register a unique HS256 JWT valid until ``expires_at`` (clock time)."""
        now = self.now()
        jti = uuid.uuid4().hex
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "iat": int(now),
            "exp": int(expires_at),
            "jti": jti,
        }
        payload.update(claims or {})
        token = jwt.encode(payload, self.jwt_secret, algorithm="HS256")
        record = AccessToken(
            token=token,
            jti=jti,
            issued_at=now,
            expires_at=expires_at,
            claims=payload,
            grant=grant,
            family=family,
        )
        self.access_tokens[token] = record
        self.issued.append(token)
        return record

    def new_opaque_token(self, prefix: str = "", nbytes: int = 32) -> str:
        """A random opaque (refresh) token, recorded in ``issued``."""
        token = prefix + secrets.token_hex(nbytes)
        self.issued.append(token)
        return token

    def decode(self, token: str, **kwargs: Any) -> dict[str, Any] | None:
        """Verify the signature only (expiry is the clock's business)."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.jwt_secret,
                algorithms=["HS256"],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
                **kwargs,
            )
        except jwt.InvalidTokenError:
            return None
        return claims

    def lookup_access(self, token: str) -> tuple[AccessToken | None, str]:
        """(record, "") for a currently valid token, else (record or None, reason)."""
        record = self.access_tokens.get(token)
        if record is None or self.decode(token) is None:
            return None, "unknown token"
        if record.revoked:
            return record, f"token revoked ({record.revoked_reason or 'revoked'})"
        if self.now() >= record.expires_at:
            return record, "token expired"
        return record, ""

    def valid_access_tokens(self) -> list[AccessToken]:
        now = self.now()
        return [t for t in self.access_tokens.values() if t.valid_at(now)]

    def revoke_access(self, token: AccessToken, reason: str = "revoked") -> None:
        if not token.revoked:
            token.revoked = True
            token.revoked_reason = reason

    def revoke(self, token_or_jti: str, reason: str = "revoked") -> bool:
        """Invalidate one access token (by token or jti); True if found."""
        for record in self.access_tokens.values():
            if token_or_jti in (record.token, record.jti):
                self.revoke_access(record, reason)
                return True
        return False

    def revoke_all(
        self, reason: str = "credentials rotated", *, include_refresh: bool = False
    ) -> int:
        """Invalidate every access token server-side (and, if asked, every refresh token).

        Returns how many access tokens were valid until now.
        """
        count = 0
        now = self.now()
        for record in self.access_tokens.values():
            if record.valid_at(now):
                count += 1
            self.revoke_access(record, reason)
        if include_refresh:
            for refresh in self.refresh_tokens.values():
                if not refresh.revoked:
                    refresh.revoked = True
                    refresh.revoked_reason = reason
        return count

    # ----------------------------------------------------------- application

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        for path, (name, handler) in self.token_endpoints().items():
            app.router.add_route("*", path, self._token_route(name, handler))
        self.extra_routes(app)
        app.router.add_route("*", "/{tail:.*}", self._api_entry)
        return app

    def _token_route(
        self, name: str, handler: TokenHandler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            return await self._token_entry(request, name, handler)

        return route

    def _next_fault(self) -> Fault | None:
        if self.always_fault is not None:
            return self.always_fault
        if self.faults:
            return self.faults.pop(0)
        return None

    def _next_api_fault(self) -> Fault | None:
        if self.always_api_fault is not None:
            return self.always_api_fault
        if self.api_faults:
            return self.api_faults.pop(0)
        return None

    async def _token_entry(
        self, request: web.Request, name: str, handler: TokenHandler
    ) -> web.StreamResponse:
        self.token_requests += 1
        body = await request.read()
        path, query = split_raw_target(request)
        record = TokenRequest(
            endpoint=name,
            method=request.method,
            path=path,
            query=query,
            headers=header_dict(request),
            body=body,
            content_type=request.headers.get("Content-Type", ""),
            peer=request.remote,
            time=self.now(),
        )
        self.token_log.append(record)
        fault = self._next_fault()
        if fault is not None:
            record.fault = fault
            faulted = await apply_fault(request, fault)
            if faulted is not None:
                record.status = None if fault.reset else fault.status
                return faulted
        response = await handler(request, body, record)
        record.status = response.status
        return response

    async def _api_entry(self, request: web.Request) -> web.StreamResponse:
        self.api_requests += 1
        path, query = split_raw_target(request)
        record = ApiRequest(
            method=request.method,
            path=path,
            query=query,
            headers=header_dict(request),
            raw_headers=[
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers
            ],
            peer=request.remote,
            time=self.now(),
        )
        self.api_log.append(record)
        response = await self._api_answer(request, record)
        if record.status is None and not (record.fault is not None and record.fault.reset):
            record.status = response.status
        return response

    async def _api_answer(self, request: web.Request, record: ApiRequest) -> web.StreamResponse:
        fault = self._next_api_fault()
        if fault is not None:
            record.fault = fault
            await drain(request, record)
            faulted = await apply_fault(request, fault)
            if faulted is not None:
                return faulted
        if not self.is_api_path(request.path):
            await drain(request, record)
            return self.api_not_found(request.path)
        rejection = await self.api_precheck(request)
        if rejection is not None:
            await drain(request, record)
            return rejection
        token = bearer_token(request)
        if token is None:
            await drain(request, record)
            return self.api_unauthorized("missing or malformed bearer token")
        access, reason = self.lookup_access(token)
        if access is None or reason:
            await drain(request, record)
            return self.api_unauthorized(reason)
        rejection = self.check_token(access, request)
        if rejection is not None:
            await drain(request, record)
            return rejection
        record.token_id = access.jti
        if self.api_handler is not None:
            return await self.api_handler(request, access)
        await drain(request, record)
        return json_response(
            {
                "method": request.method,
                "path": record.path,
                "query": record.query,
                "body_sha256": record.body_sha256,
                "body_len": record.body_len,
                "headers": record.headers,
                "token": access.jti,
            }
        )


async def drain(request: web.Request, record: ApiRequest | None = None) -> None:
    """Read the whole request body in chunks (memory stays flat), hashing it."""
    if record is not None and record.body_sha256:
        return
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        digest.update(chunk)
        length += len(chunk)
    if record is not None:
        record.body_len = length
        record.body_sha256 = digest.hexdigest()


async def apply_fault(request: web.Request, fault: Fault) -> web.StreamResponse | None:
    """Carry out ``fault``; the response to return, or None to answer normally."""
    if fault.delay > 0:
        await asyncio.sleep(fault.delay)
    if fault.reset:
        if request.transport is not None:
            request.transport.abort()
        # Nothing is written on an aborted transport; aiohttp drops this response.
        return web.Response(status=500)
    if fault.status is None:
        return None
    if fault.size is None:
        return web.Response(
            status=fault.status,
            body=fault.body,
            headers={**fault.headers, "Content-Type": fault.content_type},
        )
    response = web.StreamResponse(
        status=fault.status, headers={**fault.headers, "Content-Type": fault.content_type}
    )
    response.content_length = fault.size
    await response.prepare(request)
    pattern = fault.body or b"x"
    block = (pattern * (_CHUNK // len(pattern) + 1))[:_CHUNK]
    remaining = fault.size
    try:
        while remaining > 0:
            piece = block[: min(remaining, _CHUNK)]
            await response.write(piece)
            remaining -= len(piece)
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        if request.transport is not None:
            request.transport.abort()
    return response


async def start(
    app: web.Application,
    ssl_context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host`` (a real port; 0 = any free one); (runner, base url)."""
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=0.2,
        max_line_size=65536,
        max_field_size=65536,
        max_headers=512,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = runner.addresses[0][1]
    scheme = "https" if ssl_context is not None else "http"
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"{scheme}://{url_host}:{bound}"


@contextlib.asynccontextmanager
async def serve(
    provider: FakeProvider,
    ssl_context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[str]:
    """Serve ``provider`` for the duration of the block; yields its base url (no trailing /)."""
    runner, url = await start(provider.make_app(), ssl_context=ssl_context, host=host, port=port)
    provider.base_url = url
    try:
        yield url
    finally:
        await close_runner(runner)


async def close_runner(runner: web.AppRunner) -> None:
    """``runner.cleanup()``, and no socket left open behind it. A TLS connection's
    close waits for the peer's close_notify, which through tinyproxy comes late on a
    loaded machine: after the test's loop closed, and its socket was then collected
    unclosed in a later test (a ResourceWarning). Cut what is still closing."""
    server = runner.server
    handlers = server.connections if server is not None else []
    # the sockets are taken now: once closed, a TLS transport cannot name its own
    open_ = [
        (h.transport, h.transport.get_extra_info("socket"))
        for h in handlers
        if h.transport is not None
    ]
    await runner.cleanup()
    for transport, sock in open_:
        if sock is not None and sock.fileno() != -1:
            transport.abort()
    await asyncio.sleep(0)  # the transports' connection_lost, which closes the sockets
