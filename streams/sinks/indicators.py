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

from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np

from schemas.ddl import indicators_ddl
from schemas.indicator import INDICATORS, IndicatorRecord
from schemas.pgcopy import Column, PgType, encode_rows
from streams.sinks.base import PgWriter, RedisClientWriter, grouped

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


class IndicatorTimescaleWriter(PgWriter[IndicatorRecord]):
    def ddl(self) -> list[str]:
        return [indicators_ddl(self.schema)]

    async def write(self, records: Iterable[IndicatorRecord]) -> dict[str, int]:
        groups = grouped(records, lambda r: (r.venue, r.symbol, r.timeframe))
        return await self.upsert_groups("indicators", COLUMNS, KEY, groups.values(), _copy_block)


def redis_fields(r: IndicatorRecord) -> dict[str, str | int | float]:
    """The record as hash fields (floats written with repr: exact; null → empty string)."""
    doc = r.to_dict()
    doc.pop("v")
    return {k: "" if v is None else v for k, v in doc.items()}


class IndicatorRedisWriter(RedisClientWriter[IndicatorRecord]):
    async def write(self, records: Iterable[IndicatorRecord]) -> dict[str, int]:
        periods = self.settings.redis_indicator_ttl_periods
        return await self.write_latest("indicators", records, redis_fields, periods)
