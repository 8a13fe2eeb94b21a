"""Shared fixtures. Integration and e2e tests talk to the real dev services from deploy/dev.sh
(started here if they are not up); each test gets its own namespace, i.e. its own topics,
PostgreSQL schema, Redis key prefix and consumer group, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from streams.settings import Settings

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
T = TypeVar("T")


def _service_ports(settings: Settings) -> list[tuple[str, int]]:
    kafka_host, _, kafka_port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
    pg, rd = urlsplit(settings.pg_dsn), urlsplit(settings.redis_url)
    return [
        (kafka_host, int(kafka_port)),
        (pg.hostname or "127.0.0.1", pg.port or 5432),
        (rd.hostname or "127.0.0.1", rd.port or 6379),
    ]


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@pytest.fixture(scope="session")
def services() -> None:
    """The dev services, brought up by the project's own script when not running.

    Connection settings come from the environment (SEPSTREAM_*), so the suite can run
    against services on other ports too.
    """
    if not all(_port_open(h, p) for h, p in _service_ports(Settings.from_env())):
        subprocess.run(["bash", str(REPO / "deploy" / "dev.sh"), "up"], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def settings(services: None) -> Iterator[Settings]:
    """Isolated settings: a fresh namespace, small partitions and quick group joins."""
    ns = f"t{uuid.uuid4().hex[:10]}"
    yield Settings.from_env(
        None,  # connection settings from the environment; the rest is the test's
        namespace=ns,
        app_id=f"sepstream-{ns}",
        partitions=2,
        web_port=free_port(),
        session_timeout_s=6.0,
        rebalance_timeout_s=4.0,
        bar_grace_ms=1000,
        sink_linger_ms=100,
        log_level="info",
    )


@pytest.fixture
async def pg(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.dsn_with_password())
    try:
        yield conn
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {settings.pg_schema} CASCADE")
        await conn.close()


@pytest.fixture
async def rds(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def eventually[T](
    check: Callable[[], Awaitable[T | None]],
    within: float = 60.0,
    every: float = 0.5,
    describe: Callable[[], Awaitable[object]] | None = None,
) -> T:
    """Poll an async check until it returns a truthy value, and return that value.
    On timeout, `describe` (async) is awaited to say what the state was."""
    deadline = asyncio.get_running_loop().time() + within
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    state = await describe() if describe is not None else last
    raise AssertionError(f"condition not met within {within}s (state: {state!r})")
