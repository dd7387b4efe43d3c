"""A JSON object read from the wire or a store, typed as what it is."""

from __future__ import annotations

import json

#: a decoded JSON object; its values are checked where they are read
JSONObject = dict[str, object]


def loads_object(raw: str | bytes) -> JSONObject:
    """The JSON object in ``raw``: :class:`ValueError` when it is not JSON (or not
    UTF-8), :class:`TypeError` when it is JSON but not an object."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    return data
