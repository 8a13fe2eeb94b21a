"""Least-privilege roles for real: the owner provisions, the sinks write as a writer that
cannot run DDL, the query path reads as a reader that cannot write.

The first tests use the default settings on the dev services, i.e. the three roles
deploy/dev.sh creates (an owner without CREATEROLE); the others make roles of their own on a
private TLS instance whose owner is given CREATEROLE."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest

from schemas.batch import MarketEventBatch
from schemas.ddl import scram_verifier
from schemas.events import Kind
from streams.settings import Settings
from streams.sinks.timescale import TimescaleWriter
from streams.stores.audit import audit
from streams.stores.connections import pg_connect, pg_login, writer_owns_schema
from streams.stores.provision import (
    NotProvisionedError,
    ProvisionError,
    ensure_provisioned,
    provision,
    writer_connect,
)
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


# ---- the defaults: deploy/dev.sh's roles, as a default worker and reader use them ----------


async def test_defaults_are_three_roles_without_admin_rights(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    owner, writer, reader = (pg_login(settings, r)[0] for r in ("owner", "writer", "reader"))
    assert (owner, writer, reader) == ("sepstream", "sepstream_writer", "sepstream_reader")
    assert not writer_owns_schema(settings)
    rows = await pg.fetch(
        "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles "
        "WHERE rolname = ANY($1::text[])",
        [owner, writer, reader],
    )
    assert {r["rolname"]: tuple(r)[1:] for r in rows} == {
        name: (False, False, False, True) for name in (owner, writer, reader)
    }


async def test_default_writer_cannot_drop_truncate_or_create(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    """The worker's role: rows in, through the real sink; no DDL, no DELETE/TRUNCATE."""
    s = settings.pg_schema
    writer = TimescaleWriter(settings)  # provisions the namespace (as the owner) first
    await writer.start()
    try:
        assert await writer.write([_bars(2.0), _bars(7.0, days=3)]) == {"bars": 2}
    finally:
        await writer.close()
    conn = await writer_connect(settings)
    try:
        assert await conn.fetchval("SELECT current_user") == "sepstream_writer"
        for sql in (
            f"DROP TABLE {s}.bars",
            f"DROP TABLE {s}.audit_log",
            f"DROP SCHEMA {s} CASCADE",
            f"TRUNCATE {s}.bars",
            f"TRUNCATE {s}.ticks",
            f"DELETE FROM {s}.bars",
            f"CREATE TABLE {s}.evil (x int)",
            "CREATE TABLE public.evil (x int)",
            "CREATE SCHEMA evil",
            f"ALTER TABLE {s}.bars ADD COLUMN evil int",
            f"CREATE INDEX evil ON {s}.bars (close)",
            f"UPDATE {s}.audit_log SET actor = 'x'",
            "CREATE DATABASE evil",
            "CREATE ROLE evil",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.bars") == 2
    finally:
        await conn.close()


async def test_default_reader_cannot_write(settings: Settings, pg: asyncpg.Connection) -> None:
    s = settings.pg_schema
    await provision(settings)
    await pg.execute(f"INSERT INTO {s}.gaps VALUES (now(), 'binance', 'BTC-USDT', 'x', 0)")
    conn = await pg_connect(settings, "reader")
    try:
        assert await conn.fetchval("SELECT current_user") == "sepstream_reader"
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.gaps") == 1
        for sql in (
            f"INSERT INTO {s}.gaps VALUES (now(), 'binance', 'BTC-USDT', 'y', 0)",
            f"UPDATE {s}.gaps SET reason = 'z'",
            f"DELETE FROM {s}.gaps",
            f"TRUNCATE {s}.gaps",
            f"INSERT INTO {s}.audit_log (action, actor, host, namespace) "
            "VALUES ('a', 'b', 'c', 'd')",
            f"CREATE TABLE {s}.evil (x int)",
            f"DROP TABLE {s}.gaps",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
        assert await conn.fetchval(f"SELECT count(*) FROM {s}.gaps") == 1
    finally:
        await conn.close()


async def test_tables_the_owner_adds_later_get_the_grants(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    """Default privileges: a table created after db-init (a migration) needs no new grants."""
    s = settings.pg_schema
    await provision(settings)
    await pg.execute(f"CREATE TABLE {s}.later (id bigint PRIMARY KEY, v text)")
    writer = await writer_connect(settings)
    reader = await pg_connect(settings, "reader")
    try:
        await writer.execute(f"INSERT INTO {s}.later VALUES (1, 'a')")
        await writer.execute(f"UPDATE {s}.later SET v = 'b' WHERE id = 1")
        assert await reader.fetchval(f"SELECT v FROM {s}.later") == "b"
        for conn, sql in (
            (writer, f"DELETE FROM {s}.later"),
            (writer, f"TRUNCATE {s}.later"),
            (writer, f"DROP TABLE {s}.later"),
            (reader, f"INSERT INTO {s}.later VALUES (2, 'c')"),
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)
    finally:
        await writer.close()
        await reader.close()


async def test_db_init_converges_rights_granted_by_hand(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    """Grants are applied idempotently: a right given beyond them is taken back."""
    s = settings.pg_schema
    await provision(settings)
    await pg.execute(f"GRANT DELETE, TRUNCATE ON {s}.bars TO sepstream_writer")
    await pg.execute(f"GRANT INSERT ON {s}.bars TO sepstream_reader")
    await provision(settings)
    rights = await pg.fetch(
        "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
        "WHERE table_schema = $1 AND table_name = 'bars' AND grantee <> 'sepstream'",
        s,
    )
    assert sorted((r["grantee"], r["privilege_type"]) for r in rights) == [
        ("sepstream_reader", "SELECT"),
        ("sepstream_writer", "INSERT"),
        ("sepstream_writer", "SELECT"),
        ("sepstream_writer", "UPDATE"),
    ]


async def test_a_missing_role_is_a_clear_error_for_an_owner_without_createrole(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    missing = settings.replace(pg_writer_user="no_such_writer")
    with pytest.raises(ProvisionError, match=r"'no_such_writer' does not exist.*deploy/dev\.sh"):
        await provision(missing)


async def test_without_auto_provision_the_writer_is_told_to_run_db_init(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    strict = settings.replace(pg_auto_provision=False)
    with pytest.raises(NotProvisionedError, match="sepstream db-init"):
        await ensure_provisioned(strict)
    with pytest.raises(NotProvisionedError):  # a sink starting there fails the same way
        await TimescaleWriter(strict).start()
    assert await pg.fetchval("SELECT to_regnamespace($1)", settings.pg_schema) is None
    await provision(strict)  # db-init: then the strict writer works
    await ensure_provisioned(strict)


# ---- roles of their own, made by an owner with CREATEROLE (TLS instance) ------------------


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
    conn = await writer_connect(roles)
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
    owner = TimescaleWriter(roles.replace(pg_writer_user=""))  # the owner, running DDL
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
    again = roles.replace(pg_writer_password="rotated-Pa55word")
    await provision(again)
    await provision(again)
    conn = await writer_connect(again)  # the new password works
    await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await writer_connect(roles)  # the old one no longer does


def test_scram_verifier_shape() -> None:
    v = scram_verifier("pw", b"0123456789abcdef")
    assert v.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert "pw" not in v.split("$", 2)[2]
    with pytest.raises(ValueError):
        scram_verifier("pässword", b"0123456789abcdef")
