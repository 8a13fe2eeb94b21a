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

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np
import structlog

from schemas.ddl import signals_ddl
from schemas.events import TIMEFRAMES
from schemas.pgcopy import Column, PgType, encode_rows
from schemas.signal import Signal
from streams.sinks.base import PgWriter, RedisClientWriter

log = structlog.get_logger(__name__)

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


class SignalTimescaleWriter(PgWriter):
    ddl = staticmethod(signals_ddl)

    async def write(self, signals: Iterable[Signal]) -> dict[str, int]:
        groups: dict[tuple[str, ...], list[Signal]] = defaultdict(list)
        for s in signals:
            groups[(s.venue, s.symbol, s.timeframe, s.library_version, s.backend)].append(s)
        if not groups:
            return {}
        await self.upsert("signals", COLUMNS, KEY, map(_copy_block, groups.values()))
        return {"signals": sum(len(g) for g in groups.values())}


# KEYS[1] hash; ARGV[1] ttl s, ARGV[2] ts, ARGV[3..] field, value, ... (shared by the
# latest-value hashes: a late redelivery never rolls them back)
SET_IF_NEWER: Final = """
local cur = redis.call('HGET', KEYS[1], 'ts')
if cur and tonumber(cur) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


def redis_fields(s: Signal) -> dict[str, str | int | float]:
    """The signal as Redis hash/stream fields (redis-py writes floats with repr: exact)."""
    doc = s.to_dict()
    doc.pop("v")
    return {k: int(v) if isinstance(v, bool) else v for k, v in doc.items()}


class SignalRedisWriter(RedisClientWriter):
    async def write(self, signals: Iterable[Signal]) -> dict[str, int]:
        batch = list(signals)
        if not batch:
            return {}
        assert self.client is not None, "start() first"
        latest: dict[tuple[str, str, str], Signal] = {}
        for s in batch:
            k = (s.timeframe, s.venue, s.symbol)
            if k not in latest or s.ts >= latest[k].ts:
                latest[k] = s
        p = self.prefix
        pipe = self.client.pipeline(transaction=False)
        for (tf, venue, symbol), s in latest.items():
            ttl = TIMEFRAMES.get(tf, 60) * self.settings.redis_signal_ttl_periods
            flat: list[Any] = []
            for name, value in redis_fields(s).items():
                flat += [name, value]
            pipe.eval(SET_IF_NEWER, 1, f"{p}signal:{tf}:{venue}:{symbol}", ttl, s.ts, *flat)
        stream = f"{p}signals"
        for s in batch:
            pipe.xadd(
                stream,
                redis_fields(s),  # type: ignore[arg-type]  # redis-py's mapping type is narrow
                maxlen=self.settings.redis_signals_maxlen,
                approximate=True,
            )
        await pipe.execute()
        return {"latest": len(latest), "stream": len(batch)}
