"""PostgreSQL binary COPY encoding straight from NumPy columns.

Building asyncpg record tuples costs Python objects per row; the binary COPY format is a
fixed layout per row when no field is NULL, so a whole column block becomes one NumPy
structured array and `tobytes()`. Rows with NULLs are grouped by their null pattern, each
group again fixed-layout (COPY does not care about row order).
Format: https://www.postgresql.org/docs/current/sql-copy.html (Binary Format).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import numpy as np
import numpy.typing as npt

HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER: Final = b"\xff\xff"
_PG_EPOCH_US: Final = 946_684_800_000_000  # 2000-01-01T00:00:00Z in µs since 1970


class PgType(Enum):
    """Values are (name, wire dtype); names keep members distinct (equal values alias)."""

    BIGINT = ("bigint", ">i8")
    INT = ("int", ">i4")
    SMALLINT = ("smallint", ">i2")
    FLOAT8 = ("float8", ">f8")
    TIMESTAMPTZ = ("timestamptz", ">i8")  # from int64 ns since the Unix epoch
    BOOL = ("bool", "u1")
    TEXT = ("text", "S")  # a constant per block (venue, symbol, timeframe)


@dataclass(frozen=True)
class Column:
    """One COPY column. `null` marks NULL rows (None: never NULL)."""

    pgtype: PgType
    values: npt.NDArray[Any] | str
    null: npt.NDArray[np.bool_] | None = None


def _wire(col: Column, n: int) -> tuple[np.dtype[Any], npt.NDArray[Any] | bytes]:
    if col.pgtype is PgType.TEXT:
        raw = str(col.values).encode()
        return np.dtype(f"S{len(raw)}"), raw
    values = col.values
    assert not isinstance(values, str)
    if col.pgtype is PgType.TIMESTAMPTZ:
        values = values // 1000 - _PG_EPOCH_US
    return np.dtype(col.pgtype.value[1]), values


def encode_rows(columns: list[Column], n: int) -> bytes:
    """Rows (no header/trailer) for `n` tuples of `columns`, in COPY binary format."""
    if n == 0:
        return b""
    wires = [_wire(c, n) for c in columns]
    nulls = [c.null if c.null is not None and c.null.any() else None for c in columns]
    if all(m is None for m in nulls):
        return _block(columns, wires, np.arange(n), frozenset())
    pattern = np.zeros(n, dtype=np.int64)
    for k, mask in enumerate(nulls):
        if mask is not None:
            pattern |= mask.astype(np.int64) << k
    parts = []
    for p in np.unique(pattern):
        rows = np.flatnonzero(pattern == p)
        null_cols = frozenset(k for k in range(len(columns)) if (int(p) >> k) & 1)
        parts.append(_block(columns, wires, rows, null_cols))
    return b"".join(parts)


def _block(
    columns: list[Column],
    wires: list[tuple[np.dtype[Any], npt.NDArray[Any] | bytes]],
    rows: npt.NDArray[np.intp],
    null_cols: frozenset[int],
) -> bytes:
    fields: list[tuple[str, Any]] = [("nf", ">i2")]
    for k, (dtype, _) in enumerate(wires):
        fields.append((f"l{k}", ">i4"))
        if k not in null_cols and dtype.itemsize > 0:
            fields.append((f"d{k}", dtype))
    out = np.empty(len(rows), dtype=np.dtype(fields))
    out["nf"] = len(columns)
    for k, (dtype, values) in enumerate(wires):
        if k in null_cols:
            out[f"l{k}"] = -1
            continue
        out[f"l{k}"] = dtype.itemsize
        if dtype.itemsize == 0:
            continue
        out[f"d{k}"] = values if isinstance(values, bytes) else values[rows]
    return out.tobytes()
