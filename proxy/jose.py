"""Signing JWTs with pyjwt and keys loaded by ``cryptography``: client
assertions (RFC 7523), jwt-bearer grants, DPoP proofs. No I/O, no config."""

from __future__ import annotations

import warnings
from typing import Any

#: ``client_auth`` names (RFC 8414 ``token_endpoint_auth_methods_supported``)
ALIASES = {"basic": "client_secret_basic", "body": "client_secret_post"}
METHODS = (
    "client_secret_basic", "client_secret_post", "none", "client_secret_jwt",
    "private_key_jwt", "tls_client_auth", *ALIASES,
)  # fmt: skip


def signing_alg(key: Any) -> str:
    """The JWS algorithm for a private key loaded by ``cryptography``."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: "ES256", 384: "ES384", 521: "ES512"}.get(key.curve.key_size, "ES256")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise ValueError("the private key must be RSA, EC (P-256/384/521) or Ed25519")


def load_private_key(pem: str) -> Any:
    """A PEM private key (PKCS#8 or traditional, unencrypted); ValueError otherwise."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError("is not an unencrypted PEM private key") from exc
    signing_alg(key)
    return key


def sign(claims: dict[str, Any], key: Any, key_id: str | None) -> str:
    """A compact JWS of ``claims`` with ``key`` (a private key or an HMAC secret)."""
    import jwt

    alg = "HS256" if isinstance(key, str | bytes) else signing_alg(key)
    headers = {"kid": key_id} if key_id else None
    with warnings.catch_warnings():
        # pyjwt warns of an HMAC key under 256 bits; for client_secret_jwt the key is
        # the client secret the provider issued, which authproxy cannot lengthen.
        warnings.simplefilter("ignore")
        return jwt.encode(claims, key, algorithm=alg, headers=headers)
