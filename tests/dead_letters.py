"""Reading dead letters back, for tests that check what a stage rejected and why."""

from __future__ import annotations

import base64
from typing import Any

import orjson


def read_dead_letter(data: bytes) -> dict[str, Any]:
    """The dead letter as a dict, its `original_b64` decoded into `original` (bytes)."""
    doc: dict[str, Any] = orjson.loads(data)
    if "original_b64" in doc:
        doc["original"] = base64.b64decode(doc.pop("original_b64"))
    return doc
