"""The versioned JSON envelope every sepstream record shares, and its typed field reads.

Each read raises `CodecError` whose `reason` is the dead-letter reason code, so a consumer
can dead-letter whatever it cannot read without knowing which codec failed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson


class CodecError(ValueError):
    """A record that cannot be read; `reason` is the dead-letter reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def load_envelope(data: bytes, version: int) -> dict[str, Any]:
    """The record's JSON object, if it is one and carries `"v": version`."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError("malformed_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise CodecError("malformed", "record is not a JSON object")
    if doc.get("v") != version:
        raise CodecError("unknown_version", f"v={doc.get('v')!r}")
    return doc


def strings(doc: dict[str, Any], names: Iterable[str]) -> dict[str, str]:
    out = {name: doc.get(name) for name in names}
    for name, value in out.items():
        if not isinstance(value, str):
            raise CodecError("malformed", f"{name} must be a string")
    return out  # type: ignore[return-value]


def integers(doc: dict[str, Any], names: Iterable[str]) -> dict[str, int]:
    out = {name: doc.get(name) for name in names}
    for name, value in out.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise CodecError("malformed", f"{name} must be an integer")
    return out  # type: ignore[return-value]


def floats(
    doc: dict[str, Any], names: Iterable[str], *, nullable: bool = False
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in names:
        value = doc.get(name)
        if value is None and nullable:
            out[name] = None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
        else:
            kind = "a number or null" if nullable else "a number"
            raise CodecError("malformed", f"{name} must be {kind}")
    return out


def booleans(doc: dict[str, Any], names: Iterable[str]) -> dict[str, bool]:
    out = {name: doc.get(name) for name in names}
    for name, value in out.items():
        if not isinstance(value, bool):
            raise CodecError("malformed", f"{name} must be a boolean")
    return out  # type: ignore[return-value]
