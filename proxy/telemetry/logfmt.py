"""logfmt: one ``key=value`` line per record, as Go's go-logfmt and Loki read it.

A value is written bare when it is non-empty and holds no space, ``=``, ``"``,
backslash or control character; otherwise it is quoted, with the escapes of a JSON
string (``\\"``, ``\\\\``, ``\\n``, ``\\t``, ``\\u001b``...). A multi-line stack
trace therefore stays on its line. ``None`` is an empty value (``key=``), booleans
are ``true``/``false``, lists are joined with commas, mappings are compact JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

#: what forces quotes: space, =, ", backslash, control characters (C0, DEL, C1)
_NEEDS_QUOTES = re.compile(r'[\s="\\\x00-\x1f\x7f-\x9f]')
#: left alone by JSON's escapes, but a terminal or ``str.splitlines`` acts on them
_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")
#: a key is an identifier; anything else in one becomes ``_``
_BAD_KEY = re.compile(r"[^A-Za-z0-9_.\-]")


def value(v: object) -> str:
    """``v`` as a logfmt value, quoted when it must be."""
    if v is None:
        return ""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        text = ",".join(str(x) for x in v)
    elif isinstance(v, Mapping):
        text = json.dumps(v, separators=(",", ":"), default=str)
    else:
        text = str(v)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    quoted = json.dumps(text, ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def key(k: str) -> str:
    return _BAD_KEY.sub("_", k) or "_"


def line(doc: Mapping[str, object]) -> str:
    """One logfmt line from ``doc``'s items, in their order."""
    return " ".join(f"{key(k)}={value(v)}" for k, v in doc.items())
