"""CSV text to NumPy columns, shared by the trade-dump and OHLCV readers: numbers and times.

Every conversion returns the values and a mask of the rows that did not parse (a bad value
becomes NaN for floats, a fill for integers, 0 for times), so the reader keeps the row for
validation to dead-letter rather than dropping it.

Times become int64 ns since the epoch, UTC. ISO-8601 values may carry a zone; naive ones are
UTC; fractions beyond µs are truncated. Epoch numbers are read by magnitude (absolute value):
below 1e11 seconds (so ms before 1973-03-03 would be misread as s), below 1e14 milliseconds,
below 1e17 microseconds, else nanoseconds; a time beyond int64 ns (after 2262) is a bad row.
This is decided per value, so a file that concatenates older ms dumps with newer µs ones
reads correctly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from schemas.events import NS_PER_S

# Epoch magnitude thresholds (absolute value) → ns multiplier; see the module docstring.
SECONDS_BELOW: Final = 10**11
MILLIS_BELOW: Final = 10**14
MICROS_BELOW: Final = 10**17
_INT64_MAX: Final = 2**63 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

Columns = dict[str, npt.NDArray[Any]]
Mask = npt.NDArray[np.bool_]
Fields = dict[str, tuple[npt.NDArray[Any], Mask]]  # field → (values, unparseable)
# A chunk's fields (and its rows of the wrong width) → the event columns and bad rows
Assemble = Callable[[Fields, Mask], tuple[Columns, Mask]]


def floats(texts: Sequence[str]) -> tuple[npt.NDArray[np.float64], Mask]:
    n = len(texts)
    bad = np.zeros(n, dtype=bool)
    try:
        return np.fromiter(map(float, texts), dtype=np.float64, count=n), bad
    except ValueError:
        pass
    out = np.empty(n, dtype=np.float64)
    for i, text in enumerate(texts):
        try:
            out[i] = float(text)
        except ValueError:
            out[i] = math.nan
            bad[i] = True
    return out, bad


def _int_or_none(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            return None
        if not f.is_integer():
            return None
        value = int(f)
    return value if -_INT64_MAX <= value <= _INT64_MAX else None


def ints(texts: Sequence[str], fill: int) -> tuple[npt.NDArray[np.int64], Mask]:
    n = len(texts)
    bad = np.zeros(n, dtype=bool)
    try:
        return np.fromiter(map(int, texts), dtype=np.int64, count=n), bad
    except (ValueError, OverflowError):
        pass
    out = np.empty(n, dtype=np.int64)
    for i, text in enumerate(texts):
        value = _int_or_none(text)
        bad[i] = value is None
        out[i] = fill if value is None else value
    return out, bad


def _epoch_factor(magnitude: float) -> int:
    if magnitude < SECONDS_BELOW:
        return NS_PER_S
    if magnitude < MILLIS_BELOW:
        return 1_000_000
    if magnitude < MICROS_BELOW:
        return 1_000
    return 1


def _iso_ns(text: str) -> int:
    """ISO-8601 → ns; naive times are UTC. Raises ValueError."""
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1_000


def _time_ns_or_none(text: str) -> int | None:
    value = _int_or_none(text)
    if value is not None:
        ns = value * _epoch_factor(abs(value))
        return ns if -_INT64_MAX <= ns <= _INT64_MAX else None
    try:
        f = float(text)
    except ValueError:
        try:
            return _iso_ns(text)
        except ValueError:
            return None
    if not math.isfinite(f):
        return None
    ns_f = round(f * _epoch_factor(abs(f)))
    return ns_f if -_INT64_MAX <= ns_f <= _INT64_MAX else None


def epoch_ns(raw: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], Mask]:
    """Integer epoch values (unit by magnitude) → ns; beyond the int64 ns range → 0 + bad."""
    mag = np.abs(raw)
    factor = np.where(
        mag < SECONDS_BELOW,
        NS_PER_S,
        np.where(mag < MILLIS_BELOW, 1_000_000, np.where(mag < MICROS_BELOW, 1_000, 1)),
    ).astype(np.int64)
    bad = mag.astype(np.float64) * factor > _INT64_MAX
    return np.where(bad, 0, raw * np.where(bad, 0, factor)), bad


def times(texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], Mask]:
    """Epoch numbers (unit by magnitude) or ISO-8601 → int64 ns; unparseable → 0 + bad."""
    n = len(texts)
    try:
        raw = np.fromiter(map(int, texts), dtype=np.int64, count=n)
    except (ValueError, OverflowError):
        raw = None
    if raw is not None:
        return epoch_ns(raw)
    out = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for i, text in enumerate(texts):
        value = _time_ns_or_none(text)
        if value is None:
            bad[i] = True
        else:
            out[i] = value
    return out, bad
