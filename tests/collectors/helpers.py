"""Test doubles and fixtures shared by the collector tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client import REGISTRY

from schemas.events import Kind

VENUES_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "venues"


def frames(venue: str) -> list[Any]:
    """The recorded messages of a venue's fixture file."""
    doc = orjson.loads((VENUES_DIR / f"{venue}.json").read_bytes())
    assert doc["source"], "every fixture names the documentation it follows"
    return list(doc["frames"])


@dataclass
class Added:
    kind: Kind
    venue: str
    symbol: str
    columns: dict[str, Any]
    timeframe: str | None
    reason: str | None

    def col(self, name: str) -> Any:
        return np.atleast_1d(self.columns[name])[0].item()


@dataclass
class RecordingSink:
    """Same `add` signature as `BatchingProducer`; remembers every call in order."""

    added: list[Added] = field(default_factory=list)
    flushes: int = 0

    async def add(
        self,
        kind: Kind,
        venue: str,
        symbol: str,
        columns: dict[str, Any],
        *,
        timeframe: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.added.append(Added(kind, venue, symbol, dict(columns), timeframe, reason))

    async def flush(self) -> None:
        self.flushes += 1

    def of(self, kind: Kind, symbol: str | None = None) -> list[Added]:
        return [a for a in self.added if a.kind is kind and symbol in (None, a.symbol)]

    def trade_ids(self, symbol: str) -> list[int]:
        return [int(a.col("trade_id")) for a in self.of(Kind.TRADE, symbol)]


def malformed_count(venue: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "sepstream_collector_malformed_frames_total", {"venue": venue, "reason": reason}
    )
    return value or 0.0
