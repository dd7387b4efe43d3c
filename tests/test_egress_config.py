"""The ``egress_proxy`` setting: parsing, config errors, ``no_proxy`` matching, explain.

Errors name the key path and line and never repeat a password; ``check --explain``
shows the effective proxy of each route's upstream and token endpoint with the
credentials masked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import config as configmod
from proxy.config.explain import explain
from proxy.http1.egress import EgressConfig, from_env, parse_no_proxy, parse_setting

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hunter2-Qx81"


def route(egress: str, upstream: str = "https://api.example/") -> str:
    return f"""routes:
  api:
    upstream: {upstream}
    auth: {{type: none}}
    egress_proxy: {egress}
"""


def errors_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(configmod.ConfigError) as info:
        configmod.parse(text, env or {})
    return str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("socks5://proxy:1080", "socks5:// is not supported"),
        ("https://proxy:3128", "https:// (TLS to the proxy itself) is not supported"),
        ("http://proxy.corp", "needs a port, as http://proxy.corp:3128"),
        ("proxy.corp:3128", "no scheme given"),
        ("http://proxy:99999", "invalid port"),
        ("http://proxy:3128/some/path", "no path, query or fragment"),
        (f"http://alice:{SECRET}@x@proxy:3128", "unencoded '@': percent-encode it as %40"),
        (f"http://alice:{SECRET}/x@proxy:3128", "unencoded '/': percent-encode it as %2F"),
        ("{url: 'http://p:1', pasword: x}", "unknown key 'pasword'"),
        ("{url: 'http://p:1', no_proxy: ['10.0.0.0/33']}", "'10.0.0.0/33' is not a host"),
        ("{url: 'http://p:1', password: x}", "password needs a username"),
        ("[http://p:1]", "must be an http:// URL, env, none, or a mapping"),
    ],
)
def test_bad_values_are_config_errors_with_key_path_and_line(value: str, expected: str) -> None:
    text = errors_of(route(f'"{value}"' if value[0] not in "{[" else value))
    assert "config:5: routes.api.egress_proxy: " in text, text
    assert expected in text, text
    assert SECRET not in text


def test_errors_in_defaults_and_env_name_their_source() -> None:
    text = errors_of(
        "defaults: {egress_proxy: 'ftp://p:21'}\n" + route("env"),
        {"HTTPS_PROXY": f"http://u:{SECRET}@proxy"},
    )
    assert "config:1: defaults.egress_proxy: ftp:// is not supported" in text
    assert "routes.api.egress_proxy: HTTPS_PROXY (from the environment) needs a port" in text
    assert SECRET not in text


def test_missing_secret_file_is_named_not_guessed(tmp_path: Path) -> None:
    text = errors_of(route(f'"http://u:${{file:{tmp_path}/nope}}@p:3128"'))
    assert f"routes.api.egress_proxy: cannot read secret file {tmp_path}/nope" in text


def test_route_inherits_defaults_and_can_opt_out() -> None:
    cfg = configmod.parse(
        "defaults:\n  egress_proxy: http://proxy.corp:3128\n"
        "routes:\n"
        "  a: {upstream: 'https://a.example/', auth: {type: none}}\n"
        "  b: {upstream: 'https://b.example/', auth: {type: none}, egress_proxy: none}\n"
        "  c: {upstream: 'https://c.example/', auth: {type: none}, egress_proxy: false}\n"
        "  d: {upstream: 'https://d.example/', auth: {type: none}, egress_proxy: 'http://o:8'}\n",
        {"HTTPS_PROXY": "http://env:1"},  # ignored: no route says env
    )
    a, b, c, d = cfg.routes
    assert a.egress_proxy is not None and str(a.egress_proxy.https) == "http://proxy.corp:3128"
    assert b.egress_proxy is None and c.egress_proxy is None
    assert d.egress_proxy is not None and str(d.egress_proxy.http) == "http://o:8"


def test_percent_encoded_credentials_are_decoded_for_basic_auth() -> None:
    eg = parse_setting("http://al%40ice:p%2Fw%40rd@proxy:3128", {})
    assert eg is not None and eg.https is not None
    assert eg.https.username == "al@ice"
    line = eg.https.proxy_authorization()
    assert line == b"Proxy-Authorization: Basic YWxAaWNlOnAvd0ByZA==\r\n"  # al@ice:p/w@rd
    assert str(eg.https) == "http://al@ice:***@proxy:3128"
    assert "p/w@rd" not in repr(eg)


def test_env_follows_curl_and_go_spellings() -> None:
    eg = from_env({"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2",
                   "http_proxy": "lower-http:3", "NO_PROXY": ""})  # fmt: skip
    assert str(eg.https) == "http://upper:1"  # uppercase first, as Go
    assert str(eg.http) == "http://lower-http:3"  # no scheme: http://, as curl and Go
    assert eg.no_proxy == ()
    assert from_env({}).https is None and from_env({}).http is None


NO_PROXY = "*.corp.example, .internal, idp.example:8443, 10.0.0.0/8, 192.168.1.5, [::1]:443"


@pytest.mark.parametrize(
    ("scheme", "host", "port", "direct"),
    [
        ("https", "api.provider.com", 443, False),
        ("https", "corp.example", 443, True),  # a domain entry matches the domain itself
        ("https", "a.b.corp.example", 443, True),
        ("https", "notcorp.example", 443, False),  # a suffix, not a substring
        ("https", "internal", 443, True),
        ("https", "svc.internal", 443, True),
        ("https", "idp.example", 8443, True),
        ("https", "idp.example", 443, False),  # the entry names another port
        ("https", "10.1.2.3", 443, True),  # CIDR
        ("https", "11.1.2.3", 443, False),
        ("http", "192.168.1.5", 80, True),
        ("http", "192.168.1.50", 80, False),
        ("https", "::1", 443, True),
        ("https", "::1", 8443, False),
        ("https", "API.PROVIDER.COM.", 443, False),
        ("https", "SVC.Internal.", 443, True),  # case and a trailing dot do not matter
        ("https", "localhost", 443, False),  # loopback is not bypassed implicitly
    ],
)
def test_no_proxy_matching(scheme: str, host: str, port: int, direct: bool) -> None:
    eg = parse_setting({"url": "http://proxy:3128", "no_proxy": NO_PROXY}, {})
    assert eg is not None
    assert (eg.proxy_for(scheme, host, port) is None) is direct


def test_no_proxy_star_and_blanks() -> None:
    assert parse_no_proxy([" ", ""]) == ()
    eg = parse_setting({"url": "http://proxy:3128", "no_proxy": ["*"]}, {})
    assert isinstance(eg, EgressConfig) and eg.proxy_for("https", "anything", 443) is None


def test_check_explain_shows_effective_proxy_with_credentials_masked(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
defaults:
  egress_proxy: "http://alice:${{file:{pw}}}@proxy.corp:3128"
routes:
  api:
    upstream: https://api.example/
    auth:
      type: oauth2_client_credentials
      token_url: https://idp.corp.example/token
      client_id: cid
      client_secret: csecret-value-1
    egress_proxy:
      url: "http://bob:{SECRET}@proxy.corp:3128"
      no_proxy: [.corp.example]
  other:
    upstream: https://other.example/
    auth: {{type: none}}
  fromenv:
    upstream: http://plain.example/
    auth: {{type: none}}
    egress_proxy: env
"""
    )
    env = {**os.environ, "HTTP_PROXY": f"http://carol:{SECRET}@envproxy:8080"}
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--explain", "-c", str(cfg)],
        cwd=ROOT, capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout + out.stderr
    assert "upstream: via http://bob:***@proxy.corp:3128" in out.stdout
    assert "token_url: direct (no_proxy)" in out.stdout
    assert "proxy: http://alice:***@proxy.corp:3128" in out.stdout
    assert "http_proxy: http://carol:***@envproxy:8080" in out.stdout
    assert "from: environment" in out.stdout


def test_explain_of_a_direct_route_says_none() -> None:
    cfg = configmod.parse(route("none"), {})
    assert "egress_proxy: null" in explain(cfg)
