"""Dead-letter records: why an input was rejected, and the input itself
(docs/ARCHITECTURE.md#dead-letters).

One dead letter per rejected event; a record that cannot be decoded at all yields one
dead letter carrying its original bytes (base64), since its events cannot be counted.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from schemas.events import SCHEMA_VERSION

_KEY_MAX = 256  # bytes of a record's key kept in its dead letter


def dead_letter(
    *,
    stage: str,
    reason: str,
    detail: str = "",
    error: str | None = None,
    source: tuple[str, int, int] | None = None,
    key: bytes | None = None,
    event: dict[str, Any] | None = None,
    original: bytes | None = None,
) -> bytes:
    """Encode a dead letter; `source` is (topic, partition, offset) of the input record,
    `error` the class of the exception a stage raised on it (reason `stage_error`)."""
    doc: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "ts_dlq": time.time_ns(),
    }
    if error is not None:
        doc["error"] = error
    if source is not None:
        doc["topic"], doc["partition"], doc["offset"] = source
    if key is not None:
        doc["key"] = key[:_KEY_MAX].decode("utf-8", "replace")  # a key is no payload
    if event is not None:
        doc["event"] = event
    if original is not None:
        doc["original_b64"] = base64.b64encode(original).decode("ascii")
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
