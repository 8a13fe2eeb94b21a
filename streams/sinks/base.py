"""What every sink writer shares: its connection, opened lazily, and closed once."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import redis.asyncio as aioredis

from streams.settings import Settings


class PgWriter:
    """A pool, and the writer's tables created (idempotently) when it first connects.

    `ddl(schema)` gives the SQL; concurrent workers serialise on one advisory lock.
    """

    ddl: Callable[[str], str]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.schema = settings.pg_schema
        self.pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        if self.pool is None:
            self.pool = await asyncpg.create_pool(
                self.settings.dsn_with_password(), min_size=1, max_size=2
            )
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sepstream-ddl'))")
                await conn.execute(type(self).ddl(self.schema))

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None


class RedisClientWriter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prefix = settings.redis_prefix
        self.client: aioredis.Redis | None = None

    async def start(self) -> None:
        if self.client is None:
            self.client = aioredis.from_url(self.settings.redis_url)
            await self.client.ping()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
