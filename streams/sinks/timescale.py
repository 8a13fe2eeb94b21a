"""TimescaleDB writer: binary COPY of whole micro-batches, idempotent, one transaction per write.

Fast path: COPY straight into the hypertable (docs/ARCHITECTURE.md#write-path). A unique
violation means a redelivery: the same rows are then COPYed into a temporary staging table
and moved with INSERT … ON CONFLICT, so replays never duplicate rows. Bars always take the
upsert path because a corrected bar must replace the one stored. Trades are stored once
per trade id whatever their timestamp (`trade_ids`, written in the same transaction).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import numpy as np
import structlog

from schemas.batch import MarketEventBatch
from schemas.ddl import core_ddl, drop_chunks_sql, policy_ddl, prune_trade_ids_sql
from schemas.events import Kind
from schemas.pgcopy import Column, PgType, encode_rows
from streams.settings import Settings
from streams.sinks.base import PgWriter, copy_in, copy_payload, grouped, stage_rows, staged_upsert

log = structlog.get_logger(__name__)

T, F, I8, I2, TS = PgType.TEXT, PgType.FLOAT8, PgType.BIGINT, PgType.SMALLINT, PgType.TIMESTAMPTZ


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    upsert: bool  # True: a redelivered row replaces the stored one (bars may be corrected)
    to_copy: Callable[[MarketEventBatch], list[Column]]


def _instrument(b: MarketEventBatch) -> list[Column]:
    """The columns every table starts with: event time, venue, symbol."""
    return [Column(TS, b.cols["ts_event"]), Column(T, b.venue), Column(T, b.symbol)]


def _ticks(b: MarketEventBatch) -> list[Column]:
    c = b.cols
    seq = c["seq"]
    return [
        *_instrument(b),
        Column(I8, c["trade_id"]),
        Column(F, c["price"]),
        Column(F, c["size"]),
        Column(I2, c["side"].astype(np.int16)),
        Column(I8, c["ts_event"]),
        Column(I8, c["ts_recv"]),
        Column(I8, seq, null=seq < 0),
    ]


def _quotes(b: MarketEventBatch) -> list[Column]:
    c = b.cols
    return [
        *_instrument(b),
        *(Column(F, c[k]) for k in ("bid_price", "bid_size", "ask_price", "ask_size")),
        Column(I8, c["ts_event"]),
        Column(I8, c["ts_recv"]),
        Column(I8, c["seq"]),
    ]


def _bars(b: MarketEventBatch) -> list[Column]:
    c = b.cols
    vwap = c["vwap"]
    return [
        *_instrument(b),
        Column(T, b.timeframe or ""),
        *(Column(F, c[k]) for k in ("open", "high", "low", "close", "volume")),
        Column(I8, c["trades"]),
        Column(F, vwap, null=~np.isfinite(vwap)),
        Column(I2, c["flags"].astype(np.int16)),
    ]


def _gaps(b: MarketEventBatch) -> list[Column]:
    return [*_instrument(b), Column(T, b.reason or "unspecified"), Column(I8, b.cols["ts_recv"])]


TRADE_ID_COLUMNS: Final = ("venue", "symbol", "trade_id", "ts")


def _trade_ids(b: MarketEventBatch) -> list[Column]:
    c = b.cols
    return [Column(T, b.venue), Column(T, b.symbol), Column(I8, c["trade_id"]),
            Column(TS, c["ts_event"])]  # fmt: skip


TABLES: Final[dict[Kind, TableSpec]] = {
    Kind.TRADE: TableSpec(
        "ticks",
        (
            "ts",
            "venue",
            "symbol",
            "trade_id",
            "price",
            "size",
            "side",
            "ts_event_ns",
            "ts_recv_ns",
            "seq",
        ),
        ("venue", "symbol", "trade_id", "ts"),
        False,
        _ticks,
    ),
    Kind.QUOTE: TableSpec(
        "quotes",
        (
            "ts",
            "venue",
            "symbol",
            "bid_price",
            "bid_size",
            "ask_price",
            "ask_size",
            "ts_event_ns",
            "ts_recv_ns",
            "seq",
        ),
        ("venue", "symbol", "ts_event_ns", "seq", "ts"),
        False,
        _quotes,
    ),
    Kind.BAR: TableSpec(
        "bars",
        (
            "ts",
            "venue",
            "symbol",
            "timeframe",
            "open",
            "high",
            "low",
            "close",
            "volume",
            "trades",
            "vwap",
            "flags",
        ),
        ("venue", "symbol", "timeframe", "ts"),
        True,
        _bars,
    ),
    Kind.GAP: TableSpec(
        "gaps",
        ("ts", "venue", "symbol", "reason", "ts_recv_ns"),
        ("venue", "symbol", "ts"),
        False,
        _gaps,
    ),
}


class TimescaleWriter(PgWriter[MarketEventBatch]):
    """Ticks, quotes, bars and gaps (md.events.v1, md.bars.v1) into their hypertables."""

    pool_size = 4

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.license = "unknown"

    async def ensure_schema(self) -> None:
        """Learn the edition, then create the tables (idempotent) and, on the community
        edition only, the compression and retention policies."""
        assert self.pool is not None, "start() first"
        self.license = await self.pool.fetchval("SHOW timescaledb.license")
        await super().ensure_schema()

    def ddl(self) -> list[str]:
        policies = policy_ddl(
            self.schema,
            self.license,
            compress_after_days=self.settings.compress_after_days,
            tick_retention_days=self.settings.tick_retention_days or None,
        )
        if not policies:
            log.info(
                "timescaledb policies skipped",
                license=self.license,
                why="compression/retention policies need the community (timescale) edition; "
                "retention runs as a scheduled drop_chunks instead",
            )
        return [core_ddl(self.schema), *policies]

    async def drop_old_chunks(self) -> int:
        """Retention: old tick/quote chunks on the Apache edition (the community edition's
        policies do it there) and old trade ids on both; a no-op unless
        SEPSTREAM_TICK_RETENTION_DAYS is set."""
        days = self.settings.tick_retention_days
        if not days or self.pool is None:
            return 0
        dropped = 0
        async with self.pool.acquire() as conn:
            if self.license != "timescale":  # the community edition has retention policies
                for table in ("ticks", "quotes"):
                    rows = await conn.fetch(drop_chunks_sql(self.schema, table), days)
                    dropped += len(rows)
            await conn.execute(prune_trade_ids_sql(self.schema), days)
        return dropped

    async def write(self, batches: Iterable[MarketEventBatch]) -> dict[str, int]:
        """Write all batches in one transaction; returns rows per table."""
        archive = self.settings.archive_ticks
        groups = grouped((b for b in batches if archive or b.kind is not Kind.TRADE), _kind)
        if not groups:
            return {}
        assert self.pool is not None, "start() first"
        written: dict[str, int] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            for kind, group in groups.items():
                spec = TABLES[kind]
                if kind is Kind.TRADE:
                    await self._copy_trades(conn, group)
                else:
                    await self._copy(conn, spec, _payload(spec.to_copy, group))
                written[spec.name] = sum(len(b) for b in group)
        return written

    async def _copy_trades(self, conn: Any, group: Sequence[MarketEventBatch]) -> None:
        """Ticks whose trade id is new (`trade_ids`, schemas/sql/core.sql), exactly once.

        Fast path: both COPYs straight in. A unique violation in either means an id seen
        before: then only the ticks whose ids `trade_ids` takes are inserted."""
        spec = TABLES[Kind.TRADE]
        ticks = _payload(spec.to_copy, group)
        try:
            async with conn.transaction():  # a savepoint: a violation undoes only this
                ids = _payload(_trade_ids, group)
                await copy_in(conn, "trade_ids", TRADE_ID_COLUMNS, ids, schema=self.schema)
                await copy_in(conn, spec.name, spec.columns, ticks, schema=self.schema)
            return
        except asyncpg.UniqueViolationError:
            pass
        stage = await stage_rows(conn, f"{self.schema}.{spec.name}", spec.columns, ticks)
        cols = ", ".join(spec.columns)
        key = "venue, symbol, trade_id"
        await conn.execute(
            f"WITH fresh AS ("
            f" INSERT INTO {self.schema}.trade_ids ({key}, ts)"
            f" SELECT DISTINCT ON ({key}) {key}, ts FROM {stage} ORDER BY {key}, ctid"
            f" ON CONFLICT DO NOTHING RETURNING {key}, ts) "
            f"INSERT INTO {self.schema}.ticks ({cols}) "
            f"SELECT DISTINCT ON ({key}) {cols} FROM {stage} JOIN fresh USING ({key}, ts) "
            f"ORDER BY {key}, {stage}.ctid "
            f"ON CONFLICT DO NOTHING"
        )

    async def _copy(self, conn: Any, spec: TableSpec, payload: bytes) -> None:
        if not spec.upsert:
            try:
                async with conn.transaction():  # a savepoint: a violation undoes only this
                    await copy_in(conn, spec.name, spec.columns, payload, schema=self.schema)
                return
            except asyncpg.UniqueViolationError:
                pass  # a redelivery: fall through to the idempotent path
        await staged_upsert(
            conn,
            spec.name,
            schema=self.schema,
            columns=spec.columns,
            key=spec.key,
            payload=payload,
            replace=spec.upsert,
        )


def _kind(batch: MarketEventBatch) -> Kind:
    return batch.kind


def _payload(
    to_copy: Callable[[MarketEventBatch], list[Column]], group: Sequence[MarketEventBatch]
) -> bytes:
    """The COPY stream of `group`, one block of rows per batch."""
    return copy_payload(encode_rows(to_copy(b), len(b)) for b in group)
