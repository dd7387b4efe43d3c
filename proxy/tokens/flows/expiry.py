"""Reading expiries out of token answers, the many ways providers write them.

- an instant: epoch seconds (``1497881784``, or ``"1497881784"``), epoch
  milliseconds (13 digits), or ISO 8601 with ``Z`` or an offset, with or
  without fractions (``2024-09-15T12:28:18.789Z``); an ISO instant without an
  offset is taken as UTC, as the providers that omit it mean;
- a lifetime: ``expires_in`` seconds, a number or a numeric string;
- the ``exp`` claim of a JWT access token, read without verifying it (the
  token is the provider's business; we only want to know when it ends).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

#: an epoch number larger than this is in milliseconds (year 5138 in seconds)
_MS_THRESHOLD = 1e11


def dig(data: object, path: str) -> object:
    """The value at dotted ``path`` (``data.access_token``) in a JSON answer, or None."""
    node = data
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        num = float(value)
    elif isinstance(value, str):
        try:
            num = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return num if math.isfinite(num) else None


def parse_instant(value: object) -> float | None:
    """An absolute expiry as epoch seconds, or None when ``value`` is not one."""
    num = _number(value)
    if num is not None:
        return num / 1000.0 if num > _MS_THRESHOLD else num
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_lifetime(value: object) -> float | None:
    """``expires_in`` as seconds, or None when ``value`` is not a number."""
    num = _number(value)
    return num if num is not None and num >= 0 else None


def jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT, unverified; None for anything else."""
    if token.count(".") != 2:
        return None
    # Imported here: pyjwt pulls in `cryptography` (~8 MiB of RSS), and most token
    # answers say their expiry, so most proxies never need it.
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return _number(exp)


def earliest(*instants: float | None) -> float | None:
    """The earliest of the expiries a provider gave (``expires_in`` and a JWT
    ``exp`` may disagree: the token dies at the first), None when none was."""
    known = [t for t in instants if t is not None]
    return min(known) if known else None
