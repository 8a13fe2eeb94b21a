"""Fault tests run against a PRIVATE set of dev services (their own data dir and ports),
started here once per session with the project's own `deploy/dev.sh`, because the tests stop,
pause and restart them — something the shared services must never see.

Each test still gets its own namespace (topics, schema, key prefix, consumer group).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from streams.settings import Settings
from tests.conftest import REPO, free_port

DEV_SH = REPO / "deploy" / "dev.sh"


@dataclass(frozen=True)
class PrivateServices:
    """A second Kafka API / PostgreSQL / Redis set that tests may break at will."""

    dev_dir: Path
    kafka_port: int
    pg_port: int
    redis_port: int

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SEPSTREAM_DEV_DIR": str(self.dev_dir),
            "SEPSTREAM_DEV_KAFKA_PORT": str(self.kafka_port),
            "SEPSTREAM_DEV_PG_PORT": str(self.pg_port),
            "SEPSTREAM_DEV_REDIS_PORT": str(self.redis_port),
        }

    def dev(self, *args: str) -> None:
        """`deploy/dev.sh ARGS` on this instance (up/down/status SERVICE, pause/resume kafka)."""
        subprocess.run(
            ["bash", str(DEV_SH), *args],
            env=self.env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def settings(self, **overrides: object) -> Settings:
        return Settings.from_env(
            {},
            kafka_bootstrap=f"127.0.0.1:{self.kafka_port}",
            pg_dsn=f"postgresql://sepstream@127.0.0.1:{self.pg_port}/sepstream",
            pg_password="sepstream",
            redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
            **overrides,
        )


@pytest.fixture(scope="session")
def private_services() -> Iterator[PrivateServices]:
    """Up once for all fault tests, down (and its data removed) after them."""
    # short path: PostgreSQL's unix socket must fit in 107 bytes
    dev_dir = Path(tempfile.mkdtemp(prefix="sepfault-"))
    svc = PrivateServices(dev_dir, free_port(), free_port(), free_port())
    try:
        svc.dev("up")
        yield svc
    finally:
        try:
            svc.dev("down")
        finally:
            shutil.rmtree(dev_dir, ignore_errors=True)


@pytest.fixture
def fault_settings(private_services: PrivateServices) -> Settings:
    """Isolated settings on the private services, with quick joins (as tests/conftest.py)."""
    ns = f"f{uuid.uuid4().hex[:10]}"
    return private_services.settings(
        namespace=ns,
        app_id=f"sepstream-{ns}",
        partitions=2,
        web_port=free_port(),
        session_timeout_s=6.0,
        rebalance_timeout_s=4.0,
        bar_grace_ms=1000,
        sink_linger_ms=100,
        sink_retry_max_s=1.0,
        stage_stall_s=4.0,  # /healthz reports a store outage within the test's 15 s
        log_level="info",
    )


@pytest.fixture
async def fault_pg(
    fault_settings: Settings, private_services: PrivateServices
) -> AsyncIterator[asyncpg.Connection]:
    """A connection for checks; the test may stop PostgreSQL, so it is re-opened at the end."""
    conn = await asyncpg.connect(fault_settings.dsn_with_password())
    try:
        yield conn
    finally:
        with contextlib.suppress(OSError, asyncpg.InterfaceError):
            await conn.close()  # the test may have stopped the server under it
        private_services.dev("up", "postgres")  # a test that failed mid-outage left it down
        conn = await asyncpg.connect(fault_settings.dsn_with_password())
        await conn.execute(f"DROP SCHEMA IF EXISTS {fault_settings.pg_schema} CASCADE")
        await conn.close()


@pytest.fixture
async def fault_redis(
    fault_settings: Settings, private_services: PrivateServices
) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(fault_settings.redis_url)
    try:
        yield client
    finally:
        private_services.dev("up", "redis")
        keys = [k async for k in client.scan_iter(match=f"{fault_settings.redis_prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
