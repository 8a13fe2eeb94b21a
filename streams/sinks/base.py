"""What every sink writer shares: its connection, opened lazily, and closed once."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import asyncpg
import redis.asyncio as aioredis

from schemas.pgcopy import HEADER, TRAILER
from streams.settings import Settings
from streams.sinks.timescale import staged_upsert
from streams.stores.connections import redis_client, writer_owns_schema
from streams.stores.provision import writer_pool


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
            self.pool = await writer_pool(self.settings, min_size=1, max_size=2)
            if not writer_owns_schema(self.settings):
                return  # a writer without DDL rights: `sepstream db-init` made the tables
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sepstream-ddl'))")
                    await conn.execute(type(self).ddl(self.schema))
            except BaseException:
                self.pool.terminate()  # not started: the next start() runs the DDL again
                self.pool = None
                raise

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def upsert(
        self, table: str, columns: Sequence[str], key: Sequence[str], blocks: Iterable[bytes]
    ) -> None:
        """One transaction: the COPY row blocks staged, then upserted on `key` (replacing)."""
        assert self.pool is not None, "start() first"
        payload = HEADER + b"".join(blocks) + TRAILER
        async with self.pool.acquire() as conn, conn.transaction():
            await staged_upsert(
                conn,
                table,
                schema=self.schema,
                columns=columns,
                key=key,
                payload=payload,
                replace=True,
            )


class RedisClientWriter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prefix = settings.redis_prefix
        self.client: aioredis.Redis | None = None

    async def start(self) -> None:
        if self.client is None:
            self.client = redis_client(self.settings)
            await self.client.ping()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
