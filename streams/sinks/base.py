"""The one base of every sink writer (docs/ARCHITECTURE.md#sinks): the connection handling.

A writer's store may be down when the worker starts and may go away while it runs, so the
base owns the connection's life and a subclass only writes:

- `start()` connects lazily (the sink calls it before every write) and does nothing while
  connected; the client libraries reconnect an open pool or client after an outage by
  themselves;
- a connection is set up (tables created, a ping) before the first write; a start an outage
  cuts short is undone, so the next `start()` connects and sets up again instead of writing
  into tables that were never made;
- `close()` closes once; a second close, or one before any start, does nothing.

`PgWriter` (PostgreSQL: the writer role's pool, its namespace provisioned, its tables) and
`RedisClientWriter` (a client of the namespace's key prefix) are the two stores on it.
"""

from __future__ import annotations

import abc
import io
from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final, Protocol

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from schemas.events import TIMEFRAMES
from schemas.pgcopy import HEADER, TRAILER
from streams.settings import Settings
from streams.stores.connections import redis_client, writer_owns_schema
from streams.stores.provision import writer_pool

# One DDL run at a time across workers starting together (docs/ARCHITECTURE.md#storage).
DDL_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtext('sepstream-ddl'))"


class Writer[T, C](abc.ABC):
    """A writer of items `T` to one store over a connection `C` (a pool, a client); the sink
    agents (agents/sinks.py) drive it: `start()` before each write, `write(items)` in one
    go, `close()` at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: C | None = None  # set from the moment it is open, setup included

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def start(self) -> None:
        """Connect unless connected: the store may be down at boot or at the last start."""
        if self._conn is not None:
            return
        self._conn = conn = await self._open()
        try:
            await self._setup()
        except BaseException:
            self._conn = None  # not started: the next start() connects and sets up again
            await self._release(conn, abort=True)
            raise

    async def close(self) -> None:
        """Close the connection; nothing to do when it is not open."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._release(conn, abort=False)

    @abc.abstractmethod
    async def _open(self) -> C:
        """A new connection."""

    @abc.abstractmethod
    async def _setup(self) -> None:
        """Prepare the fresh connection for writing (create tables, check it answers)."""

    @abc.abstractmethod
    async def _release(self, conn: C, *, abort: bool) -> None:
        """Close `conn` (`abort`: at once, its setup failed)."""

    @abc.abstractmethod
    async def write(self, items: Iterable[T], /) -> dict[str, int]:
        """Write `items` (idempotently: a redelivery leaves the same state); rows per target."""


# --------------------------------------------------------------------------- PostgreSQL


class PgWriter[T](Writer[T, asyncpg.Pool]):
    """A pool as the writer role, and the writer's tables created (idempotently) when it
    first connects, if it may run DDL (docs/ARCHITECTURE.md#roles)."""

    pool_size: ClassVar[int] = 2

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.schema = settings.pg_schema

    @property
    def pool(self) -> asyncpg.Pool | None:
        return self._conn

    @pool.setter
    def pool(self, pool: asyncpg.Pool | None) -> None:
        """Lend the writer a pool (the read path runs `ensure_schema` on its own)."""
        self._conn = pool

    async def _open(self) -> asyncpg.Pool:
        # writer_pool provisions the namespace (schema, roles) before the first connection
        return await writer_pool(self.settings, min_size=1, max_size=self.pool_size)

    async def _setup(self) -> None:
        await self.ensure_schema()

    async def _release(self, conn: asyncpg.Pool, *, abort: bool) -> None:
        if abort:
            conn.terminate()
        else:
            await conn.close()

    @abc.abstractmethod
    def ddl(self) -> list[str]:
        """The statements that create this writer's tables (idempotent)."""

    async def ensure_schema(self) -> None:
        """Run `ddl()` on the pool, unless the writer has no DDL rights (then
        `sepstream db-init` made the tables)."""
        assert self.pool is not None, "start() first"
        if not writer_owns_schema(self.settings):
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(DDL_LOCK)
            for sql in self.ddl():
                await conn.execute(sql)

    async def upsert_groups[R](
        self,
        table: str,
        columns: Sequence[str],
        key: Sequence[str],
        groups: Collection[Sequence[R]],
        encode: Callable[[Sequence[R]], bytes],
    ) -> dict[str, int]:
        """One transaction: each group's COPY rows (`encode`: one block of rows sharing their
        text columns) staged, then upserted on `key`, replacing what is stored; returns
        {table: rows}."""
        if not groups:
            return {}
        assert self.pool is not None, "start() first"
        async with self.pool.acquire() as conn, conn.transaction():
            await staged_upsert(
                conn,
                table,
                schema=self.schema,
                columns=columns,
                key=key,
                payload=copy_payload(map(encode, groups)),
                replace=True,
            )
        return {table: sum(len(g) for g in groups)}


def copy_payload(blocks: Iterable[bytes]) -> bytes:
    """A binary COPY stream of row blocks (schemas/pgcopy.py `encode_rows`)."""
    return HEADER + b"".join(blocks) + TRAILER


async def copy_in(
    conn: Any, table: str, columns: Sequence[str], payload: bytes, *, schema: str | None = None
) -> None:
    """Binary COPY of `payload` into `table`."""
    await conn.copy_to_table(
        table,
        source=io.BytesIO(payload),
        columns=list(columns),
        schema_name=schema,
        format="binary",
    )


async def stage_rows(conn: Any, table: str, columns: Sequence[str], payload: bytes) -> str:
    """COPY `payload` into a temporary table shaped like `table`; returns its name.

    Runs inside the caller's transaction; the staging table empties itself at commit."""
    stage = f"_stage_{table.rpartition('.')[2]}"
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
        f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    await copy_in(conn, stage, columns, payload)
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


def grouped[R, K: Hashable](items: Iterable[R], key: Callable[[R], K]) -> dict[K, list[R]]:
    """`items` in groups of equal `key`, in order (one COPY block per group)."""
    groups: dict[K, list[R]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups


# -------------------------------------------------------------------------------- Redis


class Stamped(Protocol):
    """An output record of one instrument, timeframe and bar (indicator record, signal)."""

    @property
    def venue(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def timeframe(self) -> str: ...
    @property
    def ts(self) -> int: ...


# KEYS[1] hash; ARGV[1] ttl s, ARGV[2] ts, ARGV[3..] field, value, ... (the latest-value
# hashes: a late redelivery never rolls them back)
SET_IF_NEWER: Final = """
local cur = redis.call('HGET', KEYS[1], 'ts')
if cur and tonumber(cur) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


class RedisClientWriter[T](Writer[T, aioredis.Redis]):
    """A client of the namespace's keys (`prefix`), pinged when it connects."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.prefix = settings.redis_prefix

    @property
    def client(self) -> aioredis.Redis | None:
        return self._conn

    async def _open(self) -> aioredis.Redis:
        return redis_client(self.settings)

    async def _setup(self) -> None:
        assert self._conn is not None
        await self._conn.ping()

    async def _release(self, conn: aioredis.Redis, *, abort: bool) -> None:
        await conn.aclose()

    def pipeline(self) -> Pipeline:
        """A pipeline without MULTI: every command is idempotent on its own."""
        assert self.client is not None, "start() first"
        return self.client.pipeline(transaction=False)

    async def write_latest[S: Stamped](
        self,
        name: str,
        records: Iterable[S],
        fields: Callable[[S], Mapping[str, str | int | float]],
        ttl_periods: int,
        *,
        also: Callable[[Pipeline, list[S]], dict[str, int]] | None = None,
    ) -> dict[str, int]:
        """The newest record of each instrument and timeframe into the hash
        `{prefix}{name}:{tf}:{venue}:{symbol}`, unless the hash holds a later one
        (`SET_IF_NEWER`), with a TTL of `ttl_periods` periods; `also` queues more commands
        for the same records in the same pipeline. Returns {"latest": hashes, **also's}."""
        batch = list(records)
        if not batch:
            return {}
        latest: dict[tuple[str, str, str], S] = {}
        for r in batch:
            k = (r.timeframe, r.venue, r.symbol)
            if k not in latest or r.ts >= latest[k].ts:
                latest[k] = r
        pipe = self.pipeline()
        for (tf, venue, symbol), r in latest.items():
            ttl = TIMEFRAMES.get(tf, 60) * ttl_periods
            flat: list[Any] = []
            for field, value in fields(r).items():
                flat += [field, value]
            key = f"{self.prefix}{name}:{tf}:{venue}:{symbol}"
            pipe.eval(SET_IF_NEWER, 1, key, ttl, r.ts, *flat)
        more = also(pipe, batch) if also is not None else {}
        await pipe.execute()
        return {"latest": len(latest), **more}
