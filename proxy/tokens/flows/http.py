"""Talking to token endpoints: one request, a bounded answer, failures translated.

Every flow sends its token requests through :func:`request_json`, so that the
rules are the same for all of them, as httpx translates transport errors in one
place:

- the answer is read up to :data:`MAX_ANSWER` bytes; a bigger one is refused,
  never buffered whole;
- network errors, timeouts, 5xx, 408 and 429 are *retryable* (``Retry-After``
  is honoured); every other 4xx is not: retrying cannot fix bad credentials;
- a :class:`~proxy.tokens.manager.TokenFetchError` message names the provider's HTTP
  status and its error code (OAuth2 ``error``, or ``error.code`` of an error
  envelope), and nothing else of the answer: never a secret, a token, or the
  raw body.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlencode

from proxy.http1.errors import (
    Closed,
    ConnectError,
    Http1Error,
    ProtocolError,
    Timeout,
    TLSError,
    TooLarge,
)
from proxy.tokens.dpop import DPoPKey
from proxy.tokens.flows.client import Answer, Refused, TokenClient
from proxy.tokens.jsondoc import JSONObject, loads_object
from proxy.tokens.token import TokenFetchError

#: a token answer is a few KiB at most; anything past this is refused
MAX_ANSWER = 1024 * 1024
#: an error code is shown only when it looks like one (``invalid_client``, ``UNAUTHORIZED``)
_CODE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_RETRYABLE_4XX = frozenset({408, 425, 429})


async def request_json(
    client: TokenClient,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    form: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    json_body: object = None,
    what: str = "token endpoint",
    dpop: DPoPKey | None = None,
    on_resend: Callable[[], None] | None = None,
) -> JSONObject:
    """Send one token request; the answer's JSON object, or :class:`TokenFetchError`.

    ``what`` names the endpoint in messages ("token endpoint", "refresh endpoint").
    The client's timeout (the route's ``token_timeout``) bounds the exchange.
    """
    hdrs = {"Accept": "application/json", **(headers or {})}
    body: bytes | None = None
    if form is not None:
        body = urlencode(form).encode("ascii")
        hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif json_body is not None:
        body = json.dumps(json_body).encode("utf-8")
        hdrs.setdefault("Content-Type", "application/json")
    answer = await _exchange(client, method, url, hdrs, body, what, dpop, on_resend)
    if not 200 <= answer.status < 300:
        retry_after = _retry_after(answer.headers.get("retry-after"))
        raise _status_error(answer.status, answer.body, retry_after, what)
    return _json_answer(answer, what)


async def _exchange(
    client: TokenClient,
    method: str,
    url: str,
    hdrs: dict[str, str],
    body: bytes | None,
    what: str,
    dpop: DPoPKey | None,
    on_resend: Callable[[], None] | None,
) -> Answer:
    """The answer to one request; with DPoP, sent once more for a fresh nonce."""
    for attempt in range(2):
        if dpop is not None:
            hdrs["DPoP"] = dpop.proof(method, url)
        try:
            answer = await client.request(method, url, headers=hdrs, body=body, limit=MAX_ANSWER)
        except Http1Error as exc:
            raise _client_error(exc, what) from None
        except ValueError:
            raise TokenFetchError(
                f"a header of the request to the {what} contains a line break", retryable=False
            ) from None
        if dpop is None:
            break
        # RFC 9449 8: a nonce may come with any answer; a 400 use_dpop_nonce asks
        # for this request again with it (once).
        fresh = dpop.remember(url, answer.headers.get("dpop-nonce"))
        if attempt or not fresh or answer.status != 400:
            break
        if error_code(answer.body) != "use_dpop_nonce":
            break
        if on_resend is not None:
            on_resend()
    return answer


def _json_answer(answer: Answer, what: str) -> JSONObject:
    """A successful answer's JSON object; an answer that is none is not retried."""
    status, raw = answer.status, answer.body
    try:
        return loads_object(raw)
    except TypeError:
        problem = "with JSON that is not an object"
    except ValueError:
        head = raw.lstrip()[:1]
        if "html" in answer.headers.get("content-type", "") or head == b"<":
            problem = "with HTML, not JSON (check the URL)"
        else:
            problem = "with invalid or truncated JSON"
    raise TokenFetchError(f"{what} answered {status} {problem}", status=status, retryable=False)


def _client_error(exc: Http1Error, what: str) -> TokenFetchError:
    """A transport failure (:mod:`proxy.http1.errors`), worded for the endpoint."""
    if isinstance(exc, Timeout):
        return TokenFetchError(f"{what} did not answer in time", lost=True)
    if isinstance(exc, TooLarge):
        return _too_large(exc.answer, what)
    if isinstance(exc, TLSError):
        return TokenFetchError(f"TLS with the {what} failed ({exc.detail})")
    if isinstance(exc, ConnectError):
        return TokenFetchError(f"{what} unreachable ({exc.detail.lower()})")
    if isinstance(exc, Refused):
        return TokenFetchError(f"{what} sent an invalid answer ({exc.detail})")
    if isinstance(exc, ProtocolError) and not isinstance(exc, Closed):
        return TokenFetchError(f"{what} sent an invalid answer (malformed answer)")
    return TokenFetchError(f"{what} answer was cut short", lost=True)


def _too_large(status: int, what: str) -> TokenFetchError:
    return TokenFetchError(
        f"{what} answered {status} with more than {MAX_ANSWER // 1024} KiB; refused",
        status=status,
        retryable=status >= 500,
    )


def error_code(raw: bytes) -> str | None:
    """The provider's error code: OAuth2 ``error``, or ``error.code`` of an envelope."""
    try:
        data = loads_object(raw)
    except (TypeError, ValueError):
        return None
    err = data.get("error")
    code = err.get("code") if isinstance(err, dict) else err
    if isinstance(code, str) and _CODE.match(code):
        return code
    return None


def _status_error(status: int, raw: bytes, retry_after: float | None, what: str) -> TokenFetchError:
    code = error_code(raw)
    message = f"{what} answered {status}" + (f" ({code})" if code else "")
    retryable = status >= 500 or status in _RETRYABLE_4XX
    return TokenFetchError(
        message,
        status=status,
        retryable=retryable,
        retry_after=retry_after if retryable else None,
        error_code=code,
    )


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), 3600))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, min(when.timestamp() - time.time(), 3600.0))
