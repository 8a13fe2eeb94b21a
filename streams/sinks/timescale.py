"""TimescaleDB writer: binary COPY of whole micro-batches, idempotent, one transaction per write.

Fast path: COPY straight into the hypertable (≈149k rows/s here, DESIGN §4). A unique
violation means a redelivery: the same rows are then COPYed into a temporary staging table
and moved with INSERT … ON CONFLICT, so replays never duplicate rows. Bars always take the
upsert path because a corrected bar must replace the one stored. Trades are stored once
per trade id whatever their timestamp (`trade_ids`, written in the same transaction).
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import numpy as np
import structlog

from schemas.batch import MarketEventBatch
from schemas.ddl import core_ddl, drop_chunks_sql, policy_ddl, prune_trade_ids_sql
from schemas.events import Kind
from schemas.pgcopy import HEADER, TRAILER, Column, PgType, encode_rows
from streams.settings import Settings
from streams.stores.connections import writer_owns_schema
from streams.stores.provision import writer_pool

log = structlog.get_logger(__name__)

T, F, I8, I2, TS = PgType.TEXT, PgType.FLOAT8, PgType.BIGINT, PgType.SMALLINT, PgType.TIMESTAMPTZ


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    upsert: bool  # True: a redelivered row replaces the stored one (bars may be corrected)
    to_copy: Callable[[MarketEventBatch], list[Column]]


def _ticks(b: MarketEventBatch) -> list[Column]:
    c = b.cols
    seq = c["seq"]
    return [
        Column(TS, c["ts_event"]),
        Column(T, b.venue),
        Column(T, b.symbol),
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
        Column(TS, c["ts_event"]),
        Column(T, b.venue),
        Column(T, b.symbol),
        *(Column(F, c[k]) for k in ("bid_price", "bid_size", "ask_price", "ask_size")),
        Column(I8, c["ts_event"]),
        Column(I8, c["ts_recv"]),
        Column(I8, c["seq"]),
    ]


def _bars(b: MarketEventBatch) -> list[Column]:
    c = b.cols
    vwap = c["vwap"]
    return [
        Column(TS, c["ts_event"]),
        Column(T, b.venue),
        Column(T, b.symbol),
        Column(T, b.timeframe or ""),
        *(Column(F, c[k]) for k in ("open", "high", "low", "close", "volume")),
        Column(I8, c["trades"]),
        Column(F, vwap, null=~np.isfinite(vwap)),
        Column(I2, c["flags"].astype(np.int16)),
    ]


def _gaps(b: MarketEventBatch) -> list[Column]:
    c = b.cols
    return [
        Column(TS, c["ts_event"]),
        Column(T, b.venue),
        Column(T, b.symbol),
        Column(T, b.reason or "unspecified"),
        Column(I8, c["ts_recv"]),
    ]


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


class TimescaleWriter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.schema = settings.pg_schema
        self.pool: asyncpg.Pool | None = None
        self.license = "unknown"

    async def start(self) -> None:
        if self.pool is None:
            self.pool = await writer_pool(self.settings, min_size=1, max_size=4)
            try:
                await self.ensure_schema()
            except BaseException:
                # Not started: the next start() must create the tables again, not find a
                # pool and write into tables that may not exist.
                self.pool.terminate()
                self.pool = None
                raise

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def ensure_schema(self) -> None:
        """Create tables (idempotent) and, on the community edition only, the policies."""
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            self.license = await conn.fetchval("SHOW timescaledb.license")
            if not writer_owns_schema(self.settings):
                return  # a writer without DDL rights: `sepstream db-init` made the schema
            async with conn.transaction():
                # One DDL run at a time across workers starting together.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sepstream-ddl'))")
                await conn.execute(core_ddl(self.schema))
                retention = self.settings.tick_retention_days or None
                statements = policy_ddl(
                    self.schema,
                    self.license,
                    compress_after_days=self.settings.compress_after_days,
                    tick_retention_days=retention,
                )
                for sql in statements:
                    await conn.execute(sql)
        if not statements:
            log.info(
                "timescaledb policies skipped",
                license=self.license,
                why="compression/retention policies need the community (timescale) edition; "
                "retention runs as a scheduled drop_chunks instead",
            )

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
        groups: dict[Kind, list[MarketEventBatch]] = defaultdict(list)
        for b in batches:
            if b.kind is Kind.TRADE and not self.settings.archive_ticks:
                continue
            groups[b.kind].append(b)
        if not groups:
            return {}
        assert self.pool is not None, "start() first"
        written: dict[str, int] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            for kind, group in groups.items():
                spec = TABLES[kind]
                rows = sum(len(b) for b in group)
                if kind is Kind.TRADE:
                    await self._copy_trades(conn, group)
                    written[spec.name] = rows
                    continue
                payload = (
                    HEADER + b"".join(encode_rows(spec.to_copy(b), len(b)) for b in group) + TRAILER
                )
                await self._copy(conn, spec, payload)
                written[spec.name] = rows
        return written

    async def _copy_trades(self, conn: Any, group: Sequence[MarketEventBatch]) -> None:
        """Ticks whose trade id is new (`trade_ids`, schemas/sql/core.sql), exactly once.

        Fast path: both COPYs straight in. A unique violation in either means an id seen
        before: then only the ticks whose ids `trade_ids` takes are inserted."""
        spec = TABLES[Kind.TRADE]
        ticks = HEADER + b"".join(encode_rows(spec.to_copy(b), len(b)) for b in group) + TRAILER
        try:
            async with conn.transaction():  # a savepoint: a violation undoes only this
                ids = HEADER + b"".join(encode_rows(_trade_ids(b), len(b)) for b in group)
                await self._copy_in(conn, "trade_ids", TRADE_ID_COLUMNS, ids + TRAILER)
                await self._copy_in(conn, spec.name, spec.columns, ticks)
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

    async def _copy_in(self, conn: Any, table: str, columns: Sequence[str], payload: bytes) -> None:
        await conn.copy_to_table(
            table,
            source=io.BytesIO(payload),
            columns=list(columns),
            schema_name=self.schema,
            format="binary",
        )

    async def _copy(self, conn: Any, spec: TableSpec, payload: bytes) -> None:
        if not spec.upsert:
            try:
                async with conn.transaction():  # a savepoint: a violation undoes only this
                    await self._copy_in(conn, spec.name, spec.columns, payload)
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


async def stage_rows(conn: Any, table: str, columns: Sequence[str], payload: bytes) -> str:
    """COPY `payload` into a temporary table shaped like `table`; returns its name.

    Runs inside the caller's transaction; the staging table empties itself at commit."""
    stage = f"_stage_{table.rpartition('.')[2]}"
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
        f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    await conn.copy_to_table(
        stage, source=io.BytesIO(payload), columns=list(columns), format="binary"
    )
    return stage


async def staged_upsert(
    conn: Any,
    table: str,
    *,
    schema: str,
    columns: Sequence[str],
    key: Sequence[str],
    payload: bytes,
    replace: bool,
) -> None:
    """Binary COPY into a temporary staging table, then INSERT … ON CONFLICT on `key`.

    `replace`: a row already stored is updated (and its `updated_at` set), else kept. Runs
    inside the caller's transaction; the staging table empties itself at commit.
    """
    stage = await stage_rows(conn, f"{schema}.{table}", columns, payload)
    cols = ", ".join(columns)
    keys = ", ".join(key)
    if replace:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)
        action = f"DO UPDATE SET {updates}, updated_at = now()"
    else:
        action = "DO NOTHING"
    # One row per key even if the write repeats a key (a bar and its correction):
    # the last one staged wins.
    await conn.execute(
        f"INSERT INTO {schema}.{table} ({cols}) "
        f"SELECT DISTINCT ON ({keys}) {cols} FROM {stage} ORDER BY {keys}, ctid DESC "
        f"ON CONFLICT ({keys}) {action}"
    )
