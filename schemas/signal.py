"""`Signal`: one bitspace-damping result (docs/ARCHITECTURE.md#damping-outputs) as published on
md.signals.v1.

Public format (JSON, UTF-8, one Kafka record per instrument window, key ``venue:symbol``)::

    {"v": 1, "venue": "binance", "symbol": "BTC-USDT", "timeframe": "1m",
     "ts": 1700000040000000000, "window": 64,
     "entropy": 0.93, "coherence": 0.07, "stability": 0.74, "lam": 0.29,
     "value": -0.41, "confidence": 0.62, "iterations": 7, "converged": true,
     "collapse": false, "library_version": "default", "backend": "numpy",
     "ts_emit": 1700000101234567890}

``ts`` is the open time (int64 ns since the epoch, UTC) of the window's last bar, so
(venue, symbol, timeframe, ts) names a window; a recomputed window (a corrected bar, a
replay) carries the same name and replaces the earlier result downstream. ``window`` is W,
the closes the window held. ``library_version`` names the reference-path library the
confidence was measured against (``default`` = the built-in one of §5.6). ``ts_emit`` is
when the damping agent produced the record (for latency). Unknown versions are rejected.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

import orjson

from schemas.envelope import booleans, floats, integers, load_envelope, strings

SIGNAL_VERSION: Final = 1

_FLOATS: Final = ("entropy", "coherence", "stability", "lam", "value", "confidence")
_INTS: Final = ("ts", "window", "iterations", "ts_emit")
_BOOLS: Final = ("converged", "collapse")
_STRS: Final = ("venue", "symbol", "timeframe", "library_version", "backend")


@dataclass(frozen=True, slots=True)
class Signal:
    venue: str
    symbol: str
    timeframe: str
    ts: int
    window: int
    entropy: float
    coherence: float
    stability: float
    lam: float
    value: float
    confidence: float
    iterations: int
    converged: bool
    collapse: bool
    library_version: str
    backend: str
    ts_emit: int

    @property
    def key(self) -> str:
        """Kafka key: the instrument, like every other md.* record."""
        return f"{self.venue}:{self.symbol}"

    def to_dict(self) -> dict[str, Any]:
        return {"v": SIGNAL_VERSION, **asdict(self)}

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())


def decode_signal(data: bytes) -> Signal:
    """Parse one md.signals.v1 record; raises `CodecError` (with a dead-letter reason)."""
    doc = load_envelope(data, SIGNAL_VERSION)
    fields: dict[str, Any] = {
        **strings(doc, _STRS),
        **integers(doc, _INTS),
        **floats(doc, _FLOATS),
        **booleans(doc, _BOOLS),
    }
    return Signal(**fields)
