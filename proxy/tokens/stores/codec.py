"""Stored tokens: their encoding, Fernet encryption, and the store's error.

Stored tokens are encrypted with Fernet (the ``cryptography`` package) when
``token_store.encryption_key`` is set; :class:`TokenCodec` does that for every
persistent store.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from proxy.tokens.jsondoc import JSONObject, loads_object
from proxy.tokens.token import Token, TokenJSON

if TYPE_CHECKING:
    from cryptography.fernet import Fernet


class StoreError(Exception):
    """The token store cannot be used as configured; the message says what to do."""


GENERATE_KEY = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


class TokenCodec:
    """Tokens to stored values and back; Fernet-encrypted when a key is given.

    A stored value is a JSON object (plain) or a Fernet token string (encrypted).
    Plain values are still read when a key is set, so that adding a key later
    does not lose the stored refresh token; they are encrypted on the next save.
    """

    def __init__(self, key: str | None) -> None:
        self._fernet: Fernet | None = None
        if key:
            try:
                from cryptography.fernet import Fernet
            except ImportError:
                raise StoreError(
                    "token_store.encryption_key needs the cryptography package: "
                    "pip install 'authproxy[crypto]'"
                ) from None
            try:
                self._fernet = Fernet(key.strip().encode())
            except (ValueError, TypeError):
                raise StoreError(
                    "token_store.encryption_key is not a Fernet key (32 url-safe "
                    f"base64-encoded bytes); make one with: {GENERATE_KEY}"
                ) from None

    def encode(self, token: Token) -> TokenJSON | str:
        """The stored value: the token's JSON object, or its Fernet token string."""
        data = token.to_dict()
        if self._fernet is None:
            return data
        raw = json.dumps(data, separators=(",", ":")).encode()
        return self._fernet.encrypt(raw).decode("ascii")

    def encode_text(self, token: Token) -> str:
        value = self.encode(token)
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))

    def decode(self, value: object, where: str) -> Token:
        """The token in ``value``; ``where`` names it in errors (never its content)."""
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value.lstrip().startswith("{"):
            value = _json_object(value, where)
        if isinstance(value, dict):
            return _token(value, where)
        if not isinstance(value, str):
            raise StoreError(f"{where}: not a stored token")
        if self._fernet is None:
            raise StoreError(f"{where} is encrypted, but token_store.encryption_key is not set")
        from cryptography.fernet import InvalidToken

        try:
            raw = self._fernet.decrypt(value.encode("ascii"))
        except (InvalidToken, ValueError, UnicodeEncodeError):
            raise StoreError(
                f"cannot decrypt {where}: token_store.encryption_key is not the key "
                "it was written with"
            ) from None
        return _token(_json_object(raw.decode("utf-8", "replace"), where), where)


def _json_object(text: str, where: str) -> JSONObject:
    try:
        return loads_object(text)
    except ValueError:
        raise StoreError(f"{where}: not valid JSON") from None
    except TypeError:
        raise StoreError(f"{where}: not a stored token") from None


def _token(data: JSONObject, where: str) -> Token:
    if not isinstance(data.get("access_token"), str):
        raise StoreError(f"{where}: not a stored token (no access_token)")
    try:
        return Token.from_dict(data)
    except TypeError:
        raise StoreError(f"{where}: not a stored token") from None
