"""TLS towards upstreams and token endpoints, with real certificates from trustme.

Verification is on by default: an upstream whose CA is not trusted is refused
(502 ``upstream_unavailable``, nothing sent to it), ``ca_file`` makes it work,
the hostname is checked, and mutual TLS presents ``client_cert``/``client_key``
to both the upstream and the route's token endpoint. ``verify: false`` works
only as an explicit per-route setting, and says so in the log at start.
"""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from proxy import config as configmod
from tests.conftest import serve_app
from tests.fakes import GetPaid, serve
from tests.fakes.getpaid import LIVE_AUDIENCE


class Pki:
    """A CA, a server certificate for localhost, and a client certificate, as files."""

    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("localhost")
        self.client = self.ca.issue_cert("client.authproxy.test")
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.client_cert = tmp / "client.pem"
        self.client_key = tmp / "client.key"
        self.client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        self.client.private_key_pem.write_to_path(str(self.client_key))

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


class TlsUpstream:
    def __init__(self) -> None:
        self.hits: list[str | None] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        subject = None
        if cert:
            subject = dict(x[0] for x in cert["subject"]).get("commonName")
            if subject is None:
                alt = cert.get("subjectAltName", ())
                subject = alt[0][1] if alt else "?"
        self.hits.append(subject)
        return web.json_response({"path": request.raw_path, "client": subject})


@pytest.fixture
async def tls_upstream(pki: Pki):
    async def make(*, require_client_cert: bool = False) -> TlsUpstream:
        up = TlsUpstream()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", up.handle)
        runner, port = await serve_app(
            app, pki.server_context(require_client_cert=require_client_cert)
        )
        runners.append(runner)
        up.url = f"https://localhost:{port}"
        return up

    runners: list[web.AppRunner] = []
    yield make
    for runner in runners:
        await runner.cleanup()


def route_yaml(upstream: str, tls: str = "") -> str:
    return f"""
routes:
  secure:
    prefix: /secure/
    upstream: {upstream}/v1/
    auth: {{type: static, value: Bearer k}}
{tls}
"""


def tls_block(**keys: object) -> str:
    lines = "".join(f"      {k}: {v}\n" for k, v in keys.items())
    return "    tls:\n" + lines


async def call(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url) as resp:
        return resp.status, dict(resp.headers), await resp.read()


# -- server verification -----------------------------------------------------------------


async def test_untrusted_upstream_is_refused_by_default(tls_upstream, start_proxy, http):
    up = await tls_upstream()
    proxy = await start_proxy(route_yaml(up.url))
    status, headers, body = await call(http, f"{proxy.url}/secure/x")
    assert status == 502
    assert headers["X-Authproxy-Error"] == "upstream_unavailable"
    assert json.loads(body)["error"]["code"] == "upstream_unavailable"
    assert up.hits == []  # the handshake failed: no request was ever sent


async def test_ca_file_makes_the_upstream_trusted(pki, tls_upstream, start_proxy, http):
    up = await tls_upstream()
    proxy = await start_proxy(route_yaml(up.url, tls_block(ca_file=pki.ca_file)))
    status, _, body = await call(http, f"{proxy.url}/secure/x?q=1")
    assert status == 200
    assert json.loads(body) == {"path": "/v1/x?q=1", "client": None}
    assert up.hits == [None]


async def test_hostname_is_checked(pki, tls_upstream, start_proxy, http):
    up = await tls_upstream()
    # the certificate names localhost, not 127.0.0.1
    by_ip = up.url.replace("localhost", "127.0.0.1")
    proxy = await start_proxy(route_yaml(by_ip, tls_block(ca_file=pki.ca_file)))
    status, headers, _ = await call(http, f"{proxy.url}/secure/x")
    assert (status, headers["X-Authproxy-Error"]) == (502, "upstream_unavailable")
    assert up.hits == []


async def test_verify_false_works_and_warns_at_start(tls_upstream, start_proxy, http, caplog):
    up = await tls_upstream()
    with caplog.at_level(logging.WARNING, logger="authproxy"):
        proxy = await start_proxy(route_yaml(up.url, tls_block(verify="false")))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "TLS" in r.message]
    assert len(warnings) == 1
    assert "secure" in warnings[0].getMessage() and "verify" in warnings[0].getMessage()
    status, _, _ = await call(http, f"{proxy.url}/secure/x")
    assert status == 200


async def test_verified_routes_do_not_warn(pki, tls_upstream, start_proxy, caplog):
    up = await tls_upstream()
    with caplog.at_level(logging.WARNING, logger="authproxy"):
        await start_proxy(route_yaml(up.url, tls_block(ca_file=pki.ca_file)))
    assert not [r for r in caplog.records if "TLS" in r.getMessage()]


def test_verify_cannot_be_turned_off_globally():
    text = "defaults:\n  tls: {verify: false}\n" + route_yaml("https://localhost:1")
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse(text, {})
    assert [p.path for p in err.value.problems] == ["defaults.tls"]


# -- mutual TLS ---------------------------------------------------------------------------


async def test_mtls_upstream_gets_the_client_certificate(pki, tls_upstream, start_proxy, http):
    up = await tls_upstream(require_client_cert=True)
    tls = tls_block(ca_file=pki.ca_file, client_cert=pki.client_cert, client_key=pki.client_key)
    proxy = await start_proxy(route_yaml(up.url, tls))
    status, _, body = await call(http, f"{proxy.url}/secure/x")
    assert status == 200
    assert json.loads(body)["client"] == "client.authproxy.test"


async def test_mtls_upstream_without_client_certificate_fails(pki, tls_upstream, start_proxy, http):
    up = await tls_upstream(require_client_cert=True)
    proxy = await start_proxy(route_yaml(up.url, tls_block(ca_file=pki.ca_file)))
    status, headers, _ = await call(http, f"{proxy.url}/secure/x")
    assert (status, headers["X-Authproxy-Error"]) == (502, "upstream_unavailable")
    assert up.hits == []


# -- token endpoint behind TLS ------------------------------------------------------------


def getpaid_route(url: str, tls: str) -> str:
    return f"""
routes:
  getpaid:
    prefix: /getpaid/
    upstream: {url}/
    auth:
      type: oauth2_client_credentials
      token_url: {url}/oauth/token
      client_id: gid
      client_secret: gsecret
      audience: {LIVE_AUDIENCE}
      body: json
{tls}
"""


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
async def test_token_endpoint_behind_tls(pki, start_proxy, http, mtls):
    provider = GetPaid("gid", "gsecret")
    async with serve(provider, ssl_context=pki.server_context(require_client_cert=mtls)) as url:
        url = url.replace("127.0.0.1", "localhost")
        keys: dict[str, object] = {"ca_file": pki.ca_file}
        if mtls:
            keys.update(client_cert=pki.client_cert, client_key=pki.client_key)
        proxy = await start_proxy(getpaid_route(url, tls_block(**keys)))
        status, _, body = await call(http, f"{proxy.url}/getpaid/invoices")
        assert status == 200, body
        assert json.loads(body)["path"] == "/invoices"
        assert provider.logins == 1
        # with mtls, the handshake itself proves the token endpoint got the certificate
        assert [r.status for r in provider.token_log] == [200]


@pytest.mark.parametrize("mtls", [False, True], ids=["untrusted", "no-client-cert"])
async def test_token_endpoint_tls_failure_is_a_token_error(pki, start_proxy, http, mtls):
    provider = GetPaid("gid", "gsecret")
    async with serve(provider, ssl_context=pki.server_context(require_client_cert=mtls)) as url:
        url = url.replace("127.0.0.1", "localhost")
        tls = tls_block(ca_file=pki.ca_file) if mtls else ""
        proxy = await start_proxy(getpaid_route(url, tls))
        status, headers, body = await call(http, f"{proxy.url}/getpaid/invoices")
        assert status in (502, 503)
        assert headers["X-Authproxy-Error"] in ("token_unavailable", "token_backoff")
        assert "gsecret" not in body.decode()
        assert provider.logins == 0
        assert provider.api_requests == 0


# -- bad TLS files are config errors, not crashes ------------------------------------------


def test_unreadable_tls_files_are_config_errors(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n"
        + route_yaml(
            "https://localhost:1",
            tls_block(ca_file=garbage, client_cert=garbage, client_key=pki.client_key),
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "-c", str(cfg)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2
    assert "routes.secure.tls.ca_file" in out.stderr
    assert "routes.secure.tls.client_cert" in out.stderr
    assert "Traceback" not in out.stderr


def test_encrypted_client_key_is_a_config_error_not_a_prompt(pki, tmp_path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.client.private_key_pem.bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    text = route_yaml(
        "https://localhost:1", tls_block(client_cert=pki.client_cert, client_key=encrypted)
    )
    with pytest.raises(configmod.ConfigError) as err:
        configmod.parse(text, {})
    assert [p.path for p in err.value.problems] == ["routes.secure.tls.client_cert"]
