"""Logging: one JSON object per line (or logfmt), and nothing secret in it.

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
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, TextIO

from proxy.telemetry import logfmt

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_CREDENTIAL = re.compile(
    r"(?i)(bearer\s+|basic\s+|(?:access_token|refresh_token|client_secret|password|api_key"
    r"|apikey|secret|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',&}]+"
)
#: fields whose values the proxy itself makes from bounded sets: not scrubbed (speed)
_PLAIN = frozenset({
    "route", "status", "bytes_in", "bytes_out", "duration_ms", "upstream_ms",
    "token_fetched", "replayed", "error", "event", "source", "grant", "expires_in",
    "token_status", "suppressed", "problems",
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


def remember_secrets(config: object) -> None:
    """Remember every ``Secret`` in ``config`` so that no log line can ever carry one.

    Called for every config loaded, at start and on reload.
    """
    from proxy.config.values import Secret

    found: set[str] = set()

    def walk(value: object) -> None:
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


def _scrub(value: object) -> object:
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


def _fields(record: logging.LogRecord) -> dict[str, object]:
    d = record.__dict__
    # A set difference runs in C; the record has ~20 standard attributes to skip.
    extra = d.keys() - _STANDARD
    if not extra:
        return {}
    return {k: d[k] for k in d if k in extra and not k.startswith("_")}


_ts_second = -1
_ts_prefix = ""


def _timestamp(created: float, utc: str = "+00:00") -> str:
    """RFC 3339, UTC, with milliseconds; the date part is formatted once per second."""
    global _ts_second, _ts_prefix
    second = int(created)
    if second != _ts_second:
        _ts_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _ts_second = second
    return f"{_ts_prefix}.{int((created - second) * 1000):03d}{utc}"


def _exception(record: logging.LogRecord) -> dict[str, str]:
    """The exception's type and stack frames. Its message could quote a secret: left out."""
    if not record.exc_info or record.exc_info[0] is None:
        return {}
    etype, _, tb = record.exc_info
    out = {"exception": etype.__name__}
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


def _document(record: logging.LogRecord, utc: str) -> dict[str, object]:
    """A record's line as key/value pairs, every string in it scrubbed: ts, level,
    logger, msg, worker, then the record's fields, then its exception."""
    doc: dict[str, object] = {
        "ts": _timestamp(record.created, utc),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": redact(record.getMessage()),
    }
    if WORKER is not None:
        doc["worker"] = WORKER
    if record.name == "authproxy.access" and not record.exc_info:
        # The hot one: one per request. Its fields are known, so no scan of the
        # record and no scrubbing of values the proxy made itself.
        d = record.__dict__
        for k in _ACCESS_FIELDS:
            if k in d:
                v = d[k]
                doc[k] = redact(v) if k in _ACCESS_FREE and isinstance(v, str) else v
        return doc
    for k, v in _fields(record).items():
        doc[k] = v if k in _PLAIN else _scrub(v)
    for k, v in _exception(record).items():
        doc[k] = redact(v)
    return doc


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (``2026-12-02T01:02:03.456+00:00``), level,
    logger, msg, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_document(record, "+00:00"))


class TextFormatter(logging.Formatter):
    """``--log-format text``: logfmt (see :mod:`proxy.telemetry.logfmt`), the same
    fields as the JSON lines, ts as ``2026-12-02T01:02:03.456Z``."""

    def format(self, record: logging.LogRecord) -> str:
        return logfmt.line(_document(record, "Z"))


#: the format :func:`setup` installed (None: not set up, as for ``check``)
_mode: str | None = None


def setup(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Route every logger (aiohttp's and asyncio's too) through one scrubbing handler;
    uncaught exceptions and warnings become lines of the same format too."""
    global _mode
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _mode = fmt
    # The logging module's documented optimisations: no caller lookup (a stack walk
    # per record) and no thread/process fields, which no line of ours prints.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp's own access log duplicates ours and would print query strings.
    logging.getLogger("aiohttp.access").disabled = True
    logging.captureWarnings(True)
    sys.excepthook = _uncaught


def _uncaught(etype: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """An exception nobody caught: one line (type and frames), not a bare traceback."""
    logging.getLogger("authproxy").critical("unhandled exception", exc_info=(etype, value, tb))


def startup_error(message: str, details: Sequence[str] = ()) -> None:
    """A reason the command cannot start (invalid config, port in use, store unusable).

    Once :func:`setup` has run (``serve``, ``token``, ``authorize``), one log line at
    ERROR like every other (in JSON mode one JSON object), ``details`` joined into
    ``msg`` and counted in ``problems``. Before it (``check``): plain text, a line
    per detail.
    """
    if _mode is None:
        print(f"authproxy: {message}" + (":" if details else ""), file=sys.stderr)
        for detail in details:
            print(f"  {detail}", file=sys.stderr)
        return
    extra = {"problems": len(details)} if details else {}
    text = f"{message}: {'; '.join(details)}" if details else message
    logging.getLogger("authproxy").error("%s", text, extra=extra)


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
