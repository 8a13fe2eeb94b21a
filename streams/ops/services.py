"""What the services hold and run, for `sepstream status`, the demo and the tests: stored
rows per table, cached keys per kind, reachability and versions."""

from __future__ import annotations

from collections import Counter
from typing import Any

from schemas.ddl import TABLES
from streams.kafka.admin import admin_client
from streams.settings import Settings
from streams.stores.connections import pg_connect, redis_client


async def table_counts(settings: Settings) -> dict[str, int]:
    conn = await pg_connect(settings, "reader")
    try:
        out = {}
        for table in TABLES:
            exists = await conn.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", f"{settings.pg_schema}.{table}"
            )
            out[table] = (
                await conn.fetchval(f"SELECT count(*) FROM {settings.pg_schema}.{table}")
                if exists
                else 0
            )
        return out
    finally:
        await conn.close()


async def redis_keys(settings: Settings) -> dict[str, int]:
    """Keys under the namespace's prefix, by kind (trade, bars, ...)."""
    client = redis_client(settings)
    try:
        kinds: Counter[str] = Counter()
        async for key in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
            rest = key.decode()[len(settings.redis_prefix) :]
            kinds[rest.split(":", 1)[0]] += 1
        return dict(kinds)
    finally:
        await client.aclose()


async def service_versions(settings: Settings) -> dict[str, Any]:
    """Reachability and versions of the broker, PostgreSQL/TimescaleDB and Redis."""
    out: dict[str, Any] = {}
    try:
        async with admin_client(settings) as admin:
            cluster = await admin.describe_cluster()
        out["kafka"] = {"ok": True, "brokers": len(cluster.get("brokers", []))}
    except Exception as exc:
        out["kafka"] = {"ok": False, "error": repr(exc)}
    try:
        conn = await pg_connect(settings, "reader", timeout=5)
        try:
            out["postgres"] = {
                "ok": True,
                "version": await conn.fetchval("SHOW server_version"),
                "timescaledb": await conn.fetchval(
                    "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                ),
                "license": await conn.fetchval("SHOW timescaledb.license"),
            }
        finally:
            await conn.close()
    except Exception as exc:
        out["postgres"] = {"ok": False, "error": repr(exc)}
    client = redis_client(settings)
    try:
        info = await client.info("server")
        out["redis"] = {"ok": True, "version": info.get("redis_version")}
    except Exception as exc:
        out["redis"] = {"ok": False, "error": repr(exc)}
    finally:
        await client.aclose()
    return out
