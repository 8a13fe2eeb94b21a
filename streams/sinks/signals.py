"""Writers for damping signals (md.signals.v1): TimescaleDB `signals` and Redis.

TimescaleDB: one transaction per write; binary COPY into a temporary staging table, then
INSERT … ON CONFLICT (venue, symbol, timeframe, ts) DO UPDATE, so a redelivered signal is a
no-op and a recomputed window (a corrected bar) replaces the stored one. Signals are one
row per instrument and minute, so the staging path costs nothing that matters here.

Redis (prefix as in `streams.sinks.redis`):
  {p}signal:{tf}:{venue}:{symbol}   hash, the latest signal; only replaced by a signal of an
                                    equal or later window (a Lua check, so a late redelivery
                                    never rolls it back); TTL = redis_signal_ttl_periods periods
  {p}signals                        stream, every signal written (XADD, MAXLEN ~ 10000).
                                    At-least-once: a redelivery appends again, so readers
                                    key entries by (venue, symbol, timeframe, ts).
Hash and stream fields are the `schemas.signal` fields; booleans are 0/1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np
from redis.asyncio.client import Pipeline

from schemas.ddl import signals_ddl
from schemas.pgcopy import Column, PgType, encode_rows
from schemas.signal import Signal
from streams.sinks.base import PgWriter, RedisClientWriter, grouped

COLUMNS: Final = (
    "ts",
    "venue",
    "symbol",
    "timeframe",
    "library_version",
    "backend",
    "window_size",
    "entropy",
    "coherence",
    "stability",
    "lam",
    "value",
    "confidence",
    "iterations",
    "converged",
    "collapse",
    "ts_emit_ns",
)
KEY: Final = ("venue", "symbol", "timeframe", "ts")
_FLOATS: Final = ("entropy", "coherence", "stability", "lam", "value", "confidence")


def _copy_block(group: Sequence[Signal]) -> bytes:
    """COPY rows of signals sharing their text columns (pgcopy's TEXT is one per block)."""
    first = group[0]

    def col(name: str, dtype: Any) -> Any:
        return np.array([getattr(s, name) for s in group], dtype=dtype)

    columns = [
        Column(PgType.TIMESTAMPTZ, col("ts", np.int64)),
        Column(PgType.TEXT, first.venue),
        Column(PgType.TEXT, first.symbol),
        Column(PgType.TEXT, first.timeframe),
        Column(PgType.TEXT, first.library_version),
        Column(PgType.TEXT, first.backend),
        Column(PgType.INT, col("window", np.int32)),
        *(Column(PgType.FLOAT8, col(name, np.float64)) for name in _FLOATS),
        Column(PgType.SMALLINT, col("iterations", np.int16)),
        Column(PgType.BOOL, col("converged", np.uint8)),
        Column(PgType.BOOL, col("collapse", np.uint8)),
        Column(PgType.BIGINT, col("ts_emit", np.int64)),
    ]
    return encode_rows(columns, len(group))


class SignalTimescaleWriter(PgWriter[Signal]):
    def ddl(self) -> list[str]:
        return [signals_ddl(self.schema)]

    async def write(self, signals: Iterable[Signal]) -> dict[str, int]:
        groups = grouped(
            signals, lambda s: (s.venue, s.symbol, s.timeframe, s.library_version, s.backend)
        )
        return await self.upsert_groups("signals", COLUMNS, KEY, groups.values(), _copy_block)


def redis_fields(s: Signal) -> dict[str, str | int | float]:
    """The signal as Redis hash/stream fields (redis-py writes floats with repr: exact)."""
    doc = s.to_dict()
    doc.pop("v")
    return {k: int(v) if isinstance(v, bool) else v for k, v in doc.items()}


class SignalRedisWriter(RedisClientWriter[Signal]):
    async def write(self, signals: Iterable[Signal]) -> dict[str, int]:
        periods = self.settings.redis_signal_ttl_periods
        return await self.write_latest("signal", signals, redis_fields, periods, also=self._append)

    def _append(self, pipe: Pipeline, batch: list[Signal]) -> dict[str, int]:
        """Every signal onto the stream too (the hash keeps only the latest)."""
        stream = f"{self.prefix}signals"
        for s in batch:
            pipe.xadd(
                stream,
                redis_fields(s),  # type: ignore[arg-type]  # redis-py's mapping type is narrow
                maxlen=self.settings.redis_signals_maxlen,
                approximate=True,
            )
        return {"stream": len(batch)}
