"""Logging: one JSON object per line (or plain text), and nothing secret in it.

Log calls pass structured fields with ``extra={...}``; the formatters print
them. Secrets never reach a log call in the first place (tokens are masked in
their reprs, paths are logged without their query, exceptions are logged by type
and stack frames, never by message). As a second line of defence every
string that goes into a line (message, fields, frames) is scrubbed: values that
look like credentials (``Bearer ...``, ``client_secret=...``) are masked, and so
is every secret the config holds (:func:`remember_secrets`), should a provider
ever echo one in an error message.

The access log is :func:`access`, one line per request, and costs nothing when
``authproxy.access`` is not enabled for INFO.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, Protocol

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_CREDENTIAL = re.compile(
    r"(?i)(bearer\s+|basic\s+|(?:access_token|refresh_token|client_secret|password|api_key"
    r"|apikey|secret|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',&}]+"
)
#: fields whose values the proxy itself makes from bounded sets: not scrubbed (speed)
_PLAIN = frozenset({
    "route", "status", "bytes_in", "bytes_out", "duration_ms", "upstream_ms",
    "token_fetched", "replayed", "error", "event", "source", "grant", "expires_in",
})  # fmt: skip
#: secrets shorter than this are not scrubbed by value: they would mangle ordinary words
_MIN_SECRET = 6

access_log = logging.getLogger("authproxy.access")

_secrets: tuple[str, ...] = ()


#: every match of _CREDENTIAL contains one of these: a cheap test before the regex
_HINTS = ("bearer", "basic", "token", "secret", "password", "api_key", "apikey")


def redact(text: str) -> str:
    """``text`` with credential-looking values and every remembered secret masked."""
    for s in _secrets:
        if s in text:
            text = text.replace(s, "***")
    low = text.lower()
    for hint in _HINTS:
        if hint in low:
            return _CREDENTIAL.sub(r"\1***", text)
    return text


def remember_secrets(config: Any) -> None:
    """Remember every ``Secret`` in ``config`` so that no log line can ever carry one.

    Called for every config loaded, at start and on reload.
    """
    from proxy.config.model import Secret

    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Secret):
            if len(value) >= _MIN_SECRET:
                found.add(str(value))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk(config)
    global _secrets
    # Kept across reloads: a rotated-out secret must not appear in logs either.
    # Longest first, so that a secret containing another is masked whole.
    _secrets = tuple(sorted(found.union(_secrets), key=len, reverse=True))


def _scrub(value: Any) -> Any:
    """``value`` with every string in it redacted (before encoding, so JSON stays valid)."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v) for v in value]
    return redact(str(value))


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    d = record.__dict__
    # A set difference runs in C; the record has ~20 standard attributes to skip.
    extra = d.keys() - _STANDARD
    if not extra:
        return {}
    return {k: d[k] for k in d if k in extra and not k.startswith("_")}


_ts_second = -1
_ts_prefix = ""


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds; the date part is formatted once per second."""
    global _ts_second, _ts_prefix
    second = int(created)
    if second != _ts_second:
        _ts_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _ts_second = second
    return f"{_ts_prefix}.{int((created - second) * 1000):03d}+00:00"


def _exception(record: logging.LogRecord) -> dict[str, str]:
    """The exception's type and stack frames. Its message could quote a secret: left out."""
    if not record.exc_info or record.exc_info[0] is None:
        return {}
    etype, _, tb = record.exc_info
    out = {"error": etype.__name__}
    if tb is not None:
        out["trace"] = "".join(traceback.format_tb(tb)).rstrip()
    return out


#: the access line's fields, in order; those the client controls are scrubbed
_ACCESS_FIELDS = (
    "route", "method", "path", "status", "bytes_in", "bytes_out", "duration_ms",
    "upstream_ms", "token_fetched", "replayed", "request_id", "error",
)  # fmt: skip
_ACCESS_FREE = frozenset({"method", "path", "request_id"})


#: this process's worker number under ``serve --workers``; every line carries it
WORKER: int | None = None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "authproxy.access" and not record.exc_info:
            return self._access(record)
        doc: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if WORKER is not None:
            doc["worker"] = WORKER
        for k, v in _fields(record).items():
            doc[k] = v if k in _PLAIN else _scrub(v)
        for k, v in _exception(record).items():
            doc[k] = redact(v)
        return json.dumps(doc)

    def _access(self, record: logging.LogRecord) -> str:
        # The hot one: one per request. Its fields are known, so no scan of the
        # record and no scrubbing of values the proxy made itself.
        d = record.__dict__
        doc: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": "info",
            "logger": "authproxy.access",
            "msg": redact(record.getMessage()),
        }
        if WORKER is not None:
            doc["worker"] = WORKER
        for k in _ACCESS_FIELDS:
            if k in d:
                v = d[k]
                doc[k] = redact(v) if k in _ACCESS_FREE and isinstance(v, str) else v
        return json.dumps(doc)


class TextFormatter(logging.Formatter):
    """A line for people: time, level, message, then ``key=value`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        fields = _fields(record)
        if WORKER is not None:
            fields["worker"] = WORKER
        exc = _exception(record)
        if "error" in exc:
            fields["error"] = exc["error"]
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{ts} {record.levelname.lower():7} {record.getMessage()} {extra}".rstrip()
        if "trace" in exc:
            line += "\n" + exc["trace"]
        return redact(line)


def setup(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    """Route every logger (aiohttp's and asyncio's too) through one scrubbing handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The logging module's documented optimisations: no caller lookup (a stack walk
    # per record) and no thread/process fields, which no line of ours prints.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp's own access log duplicates ours and would print query strings.
    logging.getLogger("aiohttp.access").disabled = True


# -- the access log ----------------------------------------------------------------


class Exchanged(Protocol):
    """What one request did, as the access log reads it (``proxying.exchange.Exchange``)."""

    request_id: str
    token_fetched: bool
    replayed: bool
    upstream_s: float
    bytes_in: int
    bytes_out: int


def access(
    route: str,
    method: str,
    path: str,
    status: int,
    seconds: float,
    ex: Exchanged,
    error: str,
) -> None:
    """One access-log line. ``path`` must be without its query string.

    Callers check ``access_log.isEnabledFor(logging.INFO)`` first, so that a
    disabled access log costs one attribute lookup per request.
    """
    access_log.info(
        "request",
        extra={
            "route": route,
            "method": method,
            "path": path,
            "status": status,
            "bytes_in": ex.bytes_in,
            "bytes_out": ex.bytes_out,
            "duration_ms": round(seconds * 1000, 3),
            "upstream_ms": round(ex.upstream_s * 1000, 3),
            "token_fetched": ex.token_fetched,
            "replayed": ex.replayed,
            "request_id": ex.request_id,
            "error": error,
        },
    )
