"""Logging: one JSON object per line (or plain text), and nothing secret in it.

Log calls pass structured fields with ``extra={...}``; the formatters print
them. Secrets never reach a log call in the first place (tokens are masked in
their reprs, paths are logged without their query); as a second line of defence
:class:`RedactFilter` masks anything that looks like a credential in a message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_CREDENTIAL = re.compile(
    r"(?i)(bearer\s+|basic\s+|(?:access_token|refresh_token|client_secret|password|api_key)"
    r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',&}]+"
)


def redact(text: str) -> str:
    return _CREDENTIAL.sub(r"\1***", text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        doc.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            doc["error"] = record.exc_info[0].__name__
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{ts} {record.levelname.lower():7} {redact(record.getMessage())}"
        if record.exc_info and record.exc_info[0] is not None:
            line += f" error={record.exc_info[0].__name__}"
        return f"{line} {extra}".rstrip()


def setup(fmt: str = "json", level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log duplicates ours and would print query strings.
    logging.getLogger("aiohttp.access").disabled = True
