"""The versioned JSON envelope every sepstream record shares, and its typed field reads.

Each read raises `CodecError` whose `reason` is the dead-letter reason code, so a consumer
can dead-letter whatever it cannot read without knowing which codec failed. Nothing here
raises anything else, whatever the bytes: a JSON boolean is never taken for a number, an
integer outside int64 is not an integer here, and one too large for a float is not a number.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from typing import Any, Final

import orjson

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
_BRIEF: Final = reprlib.Repr(maxlevel=3, maxlist=6, maxdict=6, maxstring=48, maxother=48)


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
    v = doc.get("v")
    if type(v) is not int or v != version:  # `true` and `1.0` equal 1 but are no version
        raise CodecError("unknown_version", f"v={brief(v)}")
    return doc


def clip(text: str, limit: int = 64) -> str:
    """`text` cut to `limit` characters, for details that quote untrusted input."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def brief(value: object) -> str:
    """A short repr of an untrusted value (bounded depth and length, whatever its size)."""
    return clip(_BRIEF.repr(value))


def is_int64(value: object) -> bool:
    """An exact JSON integer (not a boolean) that fits in int64."""
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def as_float(value: object) -> float | None:
    """A JSON number (not a boolean) as a float; None if it is none or beyond float range."""
    if type(value) is float:
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def strings(doc: dict[str, Any], names: Iterable[str]) -> dict[str, str]:
    out = {name: doc.get(name) for name in names}
    for name, value in out.items():
        if not isinstance(value, str):
            raise CodecError("malformed", f"{name} must be a string")
    return out  # type: ignore[return-value]


def integers(doc: dict[str, Any], names: Iterable[str]) -> dict[str, int]:
    out = {name: doc.get(name) for name in names}
    for name, value in out.items():
        if not is_int64(value):
            raise CodecError("malformed", f"{name} must be an int64 integer")
    return out  # type: ignore[return-value]


def floats(
    doc: dict[str, Any], names: Iterable[str], *, nullable: bool = False
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in names:
        value = doc.get(name)
        number = as_float(value)
        if value is None and nullable:
            out[name] = None
        elif number is not None:
            out[name] = number
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
