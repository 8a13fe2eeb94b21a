"""The audit trail: a structlog event and an `audit_log` row per admin action."""

from __future__ import annotations

import asyncio
import getpass

import asyncpg
import numpy as np
import orjson
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.cli import main
from streams.settings import Settings
from streams.sinks.timescale import TimescaleWriter
from streams.stores.audit import audit


async def test_audit_writes_row_and_event(settings: Settings, pg: asyncpg.Connection) -> None:
    with capture_logs() as logs:
        row_id = await audit(settings, "offset-reset", None, {"group": "g1", "partitions": [0]})
    row = await pg.fetchrow(f"SELECT * FROM {settings.pg_schema}.audit_log WHERE id = $1", row_id)
    assert row is not None
    assert row["action"] == "offset-reset"
    assert row["actor"] == getpass.getuser()
    assert row["namespace"] == settings.namespace
    assert orjson.loads(row["details"]) == {"group": "g1", "partitions": [0]}
    events = [e for e in logs if e["event"] == "audit"]
    assert len(events) == 1
    assert events[0]["action"] == "offset-reset"
    assert events[0]["actor"] == getpass.getuser()
    assert events[0]["details"] == {"group": "g1", "partitions": [0]}
    # an explicit actor is recorded as given, in order
    second = await audit(settings, "subscription", "ops-bot", {"venue": "binance"})
    actors = await pg.fetch(f"SELECT id, actor FROM {settings.pg_schema}.audit_log ORDER BY id")
    assert [(r["id"], r["actor"]) for r in actors] == [
        (row_id, getpass.getuser()),
        (second, "ops-bot"),
    ]


async def test_db_init_is_idempotent_and_audited(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    """`sepstream db-init` on the dev defaults (an owner without CREATEROLE, the roles of
    deploy/dev.sh), twice: tables and grants the same after each run, one row per run."""
    env = {k: str(v) for k, v in settings.to_env().items()}
    grants_sql = (
        "SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants "
        "WHERE table_schema = $1 ORDER BY 1, 2, 3"
    )
    grants = []
    for _ in range(2):
        result = await _run_cli(["db-init", "--json"], env)
        assert result.exit_code == 0, result.output
        doc = orjson.loads(result.stdout)
        assert doc["schema"] == settings.pg_schema
        assert (doc["owner"], doc["writer"], doc["reader"]) == (
            "sepstream",
            "sepstream_writer",
            "sepstream_reader",
        )
        assert doc["separate_roles"] == ["reader", "writer"]
        assert doc["passwords_set"] == []  # deploy/dev.sh keeps them; the owner may not
        grants.append([tuple(r) for r in await pg.fetch(grants_sql, settings.pg_schema)])
    assert grants[0] == grants[1]
    assert ("bars", "sepstream_writer", "INSERT") in grants[0]
    assert ("bars", "sepstream_reader", "SELECT") in grants[0]
    tables = {
        r["tablename"]
        for r in await pg.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1", settings.pg_schema
        )
    }
    assert {"ticks", "bars", "signals", "indicators", "path_library", "audit_log"} <= tables
    rows = await pg.fetch(
        f"SELECT action, actor, details FROM {settings.pg_schema}.audit_log ORDER BY id"
    )
    assert [(r["action"], r["actor"]) for r in rows] == [("db-init", getpass.getuser())] * 2
    assert orjson.loads(rows[0]["details"])["schema"] == settings.pg_schema


async def test_train_is_audited(settings: Settings, pg: asyncpg.Connection) -> None:
    """`sepstream train` records who trained which library version from which bars."""
    n, t0 = 240, 1_700_000_040_000_000_000
    rng = np.random.default_rng(3)
    close = 100 + np.cumsum(rng.normal(0, 1, n))
    ts = t0 + np.arange(n, dtype=np.int64) * 60 * 10**9
    bars = MarketEventBatch.from_columns(
        Kind.BAR,
        "binance",
        "BTC-USDT",
        {
            "ts_event": ts,
            "ts_recv": ts,
            "open": close,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "volume": np.ones(n),
            "trades": np.ones(n, dtype=np.int64),
            "vwap": close,
            "flags": np.zeros(n, dtype=np.int64),
        },
        timeframe="1m",
    )
    writer = TimescaleWriter(settings)
    await writer.start()
    try:
        await writer.write([bars])
    finally:
        await writer.close()
    env = {k: str(v) for k, v in settings.to_env().items()}
    args = ["train", "--k", "2", "--window", "16", "--no-publish", "--json"]
    result = await _run_cli(args, env)
    assert result.exit_code == 0, result.output
    version = orjson.loads(result.stdout)["version"]
    row = await pg.fetchrow(f"SELECT action, actor, details FROM {settings.pg_schema}.audit_log")
    assert row is not None and (row["action"], row["actor"]) == ("train", getpass.getuser())
    details = orjson.loads(row["details"])
    assert details == {"version": version, "k": 2, "window": 16, "since": None, "published": False}


async def _run_cli(args: list[str], env: dict[str, str]) -> Result:
    runner = CliRunner()
    # the command runs its own event loop: keep it off this test's loop
    return await asyncio.to_thread(runner.invoke, main, args, env=env, catch_exceptions=False)
