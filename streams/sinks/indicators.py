"""Writers for indicator records (md.indicators.v1): TimescaleDB `indicators` and Redis.

TimescaleDB: one transaction per write; binary COPY into a temporary staging table, then
INSERT … ON CONFLICT (venue, symbol, timeframe, ts) DO UPDATE, so a redelivered record is a
no-op and a recomputed one replaces the stored row. Warm-up values are NULL, never numbers.

Redis (prefix as in `streams.sinks.redis`):
  {p}indicators:{tf}:{venue}:{symbol}   hash, the latest record's fields; only replaced by
                                        a record of an equal or later bar (a Lua check);
                                        warm-up values are empty strings;
                                        TTL = redis_indicator_ttl_periods periods
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np

from schemas.ddl import indicators_ddl
from schemas.events import TIMEFRAMES
from schemas.indicator import INDICATORS, IndicatorRecord
from schemas.pgcopy import Column, PgType, encode_rows
from streams.sinks.base import PgWriter, RedisClientWriter
from streams.sinks.signals import SET_IF_NEWER

COLUMNS: Final = ("ts", "venue", "symbol", "timeframe", "flags", *INDICATORS, "ts_emit_ns")
KEY: Final = ("venue", "symbol", "timeframe", "ts")


def _copy_block(group: Sequence[IndicatorRecord]) -> bytes:
    """COPY rows of records sharing venue/symbol/timeframe (pgcopy's TEXT is one per block)."""
    first = group[0]
    columns = [
        Column(PgType.TIMESTAMPTZ, np.array([r.ts for r in group], dtype=np.int64)),
        Column(PgType.TEXT, first.venue),
        Column(PgType.TEXT, first.symbol),
        Column(PgType.TEXT, first.timeframe),
        Column(PgType.SMALLINT, np.array([r.flags for r in group], dtype=np.int16)),
    ]
    for name in INDICATORS:
        raw = [r.values.get(name) for r in group]
        values = np.array([np.nan if x is None else x for x in raw], dtype=np.float64)
        columns.append(Column(PgType.FLOAT8, values, null=np.isnan(values)))
    columns.append(Column(PgType.BIGINT, np.array([r.ts_emit for r in group], dtype=np.int64)))
    return encode_rows(columns, len(group))


class IndicatorTimescaleWriter(PgWriter):
    ddl = staticmethod(indicators_ddl)

    async def write(self, records: Iterable[IndicatorRecord]) -> dict[str, int]:
        groups: dict[tuple[str, str, str], list[IndicatorRecord]] = defaultdict(list)
        for r in records:
            groups[(r.venue, r.symbol, r.timeframe)].append(r)
        if not groups:
            return {}
        await self.upsert("indicators", COLUMNS, KEY, map(_copy_block, groups.values()))
        return {"indicators": sum(len(g) for g in groups.values())}


def redis_fields(r: IndicatorRecord) -> dict[str, str | int | float]:
    """The record as hash fields (floats written with repr: exact; null → empty string)."""
    doc = r.to_dict()
    doc.pop("v")
    return {k: "" if v is None else v for k, v in doc.items()}


class IndicatorRedisWriter(RedisClientWriter):
    async def write(self, records: Iterable[IndicatorRecord]) -> dict[str, int]:
        latest: dict[tuple[str, str, str], IndicatorRecord] = {}
        for r in records:
            k = (r.timeframe, r.venue, r.symbol)
            if k not in latest or r.ts >= latest[k].ts:
                latest[k] = r
        if not latest:
            return {}
        assert self.client is not None, "start() first"
        p = self.prefix
        pipe = self.client.pipeline(transaction=False)
        for (tf, venue, symbol), r in latest.items():
            ttl = TIMEFRAMES.get(tf, 60) * self.settings.redis_indicator_ttl_periods
            flat: list[Any] = []
            for name, value in redis_fields(r).items():
                flat += [name, value]
            pipe.eval(SET_IF_NEWER, 1, f"{p}indicators:{tf}:{venue}:{symbol}", ttl, r.ts, *flat)
        await pipe.execute()
        return {"latest": len(latest)}
