"""Least-privilege roles for real: the owner provisions, the sinks write as a writer that
cannot run DDL, the query path reads as a reader that cannot write."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import numpy as np
import pytest

from schemas.batch import MarketEventBatch
from schemas.ddl import scram_verifier
from schemas.events import Kind
from streams.audit import audit
from streams.connections import pg_connect, writer_owns_schema
from streams.provision import provision
from streams.settings import Settings
from streams.sinks.timescale import TimescaleWriter
from tests.security.conftest import TlsServices

DAY_NS = 86_400 * 10**9
T0 = 1_700_000_040_000_000_000


def _bars(close: float, days: int = 0) -> MarketEventBatch:
    ts = T0 + days * DAY_NS  # another day: another chunk, created on the writer's insert
    return MarketEventBatch.from_columns(
        Kind.BAR,
        "binance",
        "BTC-USDT",
        {
            "ts_event": [ts],
            "ts_recv": [ts],
            "open": [1.0],
            "high": [5.0],
            "low": [0.5],
            "close": [close],
            "volume": [3.0],
            "trades": [4],
            "vwap": [np.nan],
            "flags": [0],
        },
        timeframe="1m",
    )


@pytest.fixture
async def roles(tls_services: TlsServices) -> AsyncIterator[Settings]:
    """Settings with a writer and a reader of their own, provisioned by the owner."""
    tag = uuid.uuid4().hex[:8]
    settings = tls_services.settings(
        pg_writer_user=f"w_{tag}",
        pg_writer_password=f"writer-{uuid.uuid4().hex}",
        pg_reader_user=f"r_{tag}",
        pg_reader_password=f"reader-{uuid.uuid4().hex}",
    )
    doc = await provision(settings)
    assert doc["separate_roles"] == ["reader", "writer"]
    yield settings
    owner = await pg_connect(settings)
    try:
        await owner.execute(f"DROP SCHEMA {settings.pg_schema} CASCADE")
        await owner.execute(f"DROP ROLE w_{tag}")
        await owner.execute(f"DROP ROLE r_{tag}")
    finally:
        await owner.close()


async def test_writer_upserts_but_cannot_run_ddl(roles: Settings) -> None:
    s = roles.pg_schema
    assert not writer_owns_schema(roles)
    writer = TimescaleWriter(roles)  # runs as the writer: skips the DDL it has no right to
    await writer.start()
    try:
        assert await writer.write([_bars(2.0), _bars(7.0, days=3)]) == {"bars": 2}
        assert await writer.write([_bars(3.0)]) == {"bars": 1}  # a correction: upsert
    finally:
        await writer.close()
    conn = await pg_connect(roles, "writer")
    try:
        assert await conn.fetchval("SELECT current_user") == roles.pg_writer_user
        closes = await conn.fetch(f"SELECT close FROM {s}.bars ORDER BY ts")
        assert [r["close"] for r in closes] == [3.0, 7.0]
        for ddl in (
            f"CREATE TABLE {s}.evil (x int)",
            f"DROP TABLE {s}.bars",
            f"ALTER TABLE {s}.bars ADD COLUMN evil int",
            f"TRUNCATE {s}.bars",
            "CREATE SCHEMA evil",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(ddl)
        # the audit log is append-only for the writer
        await audit(roles, "test-action", "alice", {"n": 1})
        for sql in (f"UPDATE {s}.audit_log SET actor = 'x'", f"DELETE FROM {s}.audit_log"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    finally:
        await conn.close()


async def test_reader_selects_but_cannot_write(roles: Settings) -> None:
    s = roles.pg_schema
    owner = TimescaleWriter(replace(roles, pg_writer_user=""))  # the owner, running DDL
    await owner.start()
    try:
        await owner.write([_bars(2.0)])
    finally:
        await owner.close()
    conn = await pg_connect(roles, "reader")
    try:
        assert await conn.fetchval("SELECT current_user") == roles.pg_reader_user
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.bars") == 1
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.audit_log") >= 0
        for sql in (
            f"INSERT INTO {s}.gaps VALUES (now(), 'binance', 'BTC-USDT', 'x', 0)",
            f"UPDATE {s}.bars SET close = 0",
            f"DELETE FROM {s}.bars",
            f"CREATE TABLE {s}.evil (x int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    finally:
        await conn.close()


async def test_provision_is_idempotent_and_resets_passwords(roles: Settings) -> None:
    again = replace(roles, pg_writer_password="rotated-Pa55word")
    await provision(again)
    await provision(again)
    conn = await pg_connect(again, "writer")  # the new password works
    await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await pg_connect(roles, "writer")  # the old one no longer does


def test_scram_verifier_shape() -> None:
    v = scram_verifier("pw", b"0123456789abcdef")
    assert v.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert "pw" not in v.split("$", 2)[2]
    with pytest.raises(ValueError):
        scram_verifier("pässword", b"0123456789abcdef")
