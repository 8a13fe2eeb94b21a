"""The pipeline with `SEPSTREAM_DEV_TLS=1`: deploy/dev.sh's own switch starts a private set of
services with certificates it generates (PostgreSQL TLS-only, Redis TLS-only with a
password), `sepstream db-init` provisions as the owner, and a real worker, logging in as the
writer over verified TLS, stores and caches every trade fed to it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from streams.kafka.admin import ensure_topics
from streams.kafka.producer import BatchingProducer
from streams.settings import Settings
from streams.sources import synthetic
from streams.stores.connections import pg_connect, redis_client
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, REPO, eventually, free_port

DEV_SH = REPO / "deploy" / "dev.sh"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
MIN = 60_000_000_000
EVENTS = 3_000


@dataclass(frozen=True)
class DevTlsStack:
    """A private Kafka API / PostgreSQL / Redis set started with SEPSTREAM_DEV_TLS=1."""

    dev_dir: Path
    kafka_port: int
    pg_port: int
    redis_port: int

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEPSTREAM_DEV_")}
        return env | {
            "SEPSTREAM_DEV_TLS": "1",
            "SEPSTREAM_DEV_DIR": str(self.dev_dir),
            "SEPSTREAM_DEV_KAFKA_PORT": str(self.kafka_port),
            "SEPSTREAM_DEV_PG_PORT": str(self.pg_port),
            "SEPSTREAM_DEV_REDIS_PORT": str(self.redis_port),
        }

    def dev(self, *args: str) -> str:
        done = subprocess.run(
            ["bash", str(DEV_SH), *args],
            env=self.env(),
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    def superuser_rows(self, sql: str) -> list[list[str]]:
        """Rows of `sql` run by the cluster's superuser over its unix socket (peer auth): what
        only it may see, e.g. the TLS state of other roles' sessions."""
        cmd = [str(PG_BIN / "psql"), "-X", "-At", "-F", "|", "-v", "ON_ERROR_STOP=1"]
        cmd += ["-h", str(self.dev_dir / "postgres" / "run"), "-p", str(self.pg_port)]
        cmd += ["-d", "sepstream", "-c", sql]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd, "-U", "postgres"]
        done = subprocess.run(cmd, check=True, cwd="/", capture_output=True, text=True)
        return [line.split("|") for line in done.stdout.splitlines() if line]

    @property
    def ca_file(self) -> Path:
        return self.dev_dir / "tls" / "ca.crt"

    def settings(self, **overrides: object) -> Settings:
        """What `dev.sh up` prints for this set, plus a namespace of the test's own: the
        default roles (owner in the DSN, writer and reader from the defaults)."""
        ns = f"tp{uuid.uuid4().hex[:8]}"
        values: dict[str, object] = {
            "kafka_bootstrap": f"127.0.0.1:{self.kafka_port}",
            "pg_dsn": f"postgresql://sepstream@127.0.0.1:{self.pg_port}/sepstream",
            "pg_sslmode": "verify-full",
            "pg_sslrootcert": str(self.ca_file),
            "redis_url": f"rediss://127.0.0.1:{self.redis_port}/0",
            "redis_ca_file": str(self.ca_file),
            "redis_password": "sepstream",
            "namespace": ns,
            "app_id": f"sepstream-{ns}",
            "partitions": 2,
            "web_port": free_port(),
            "session_timeout_s": 6.0,
            "rebalance_timeout_s": 4.0,
            "bar_grace_ms": 1000,
            "sink_linger_ms": 100,
        }
        return Settings.from_env({}, **{**values, **overrides})


@pytest.fixture(scope="module")
def tls_stack() -> Iterator[DevTlsStack]:
    # short path: PostgreSQL's unix socket must fit in 107 bytes
    dev_dir = Path(tempfile.mkdtemp(prefix="septlsp-"))
    stack = DevTlsStack(dev_dir, free_port(), free_port(), free_port())
    try:
        printed = stack.dev("up")
        assert f"SEPSTREAM_REDIS_URL=rediss://127.0.0.1:{stack.redis_port}/0" in printed
        assert "SEPSTREAM_PG_SSLMODE=verify-full" in printed
        yield stack
    finally:
        try:
            stack.dev("down")
        finally:
            shutil.rmtree(dev_dir, ignore_errors=True)


@pytest.fixture
async def owner(tls_stack: DevTlsStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await pg_connect(tls_stack.settings(), "owner", timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


async def test_generated_certificates_and_passwords_are_enforced(
    tls_stack: DevTlsStack, owner: asyncpg.Connection
) -> None:
    for name in ("ca.crt", "server.crt", "server.key"):
        assert (tls_stack.dev_dir / "tls" / name).is_file()
    assert (tls_stack.dev_dir / "tls" / "server.key").stat().st_mode & 0o077 == 0
    ssl = await owner.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert ssl is True
    # PostgreSQL: no plain TCP; Redis: TLS, and nothing without the password
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await pg_connect(tls_stack.settings(pg_sslmode="disable"), timeout=10)
    for password in ("", "wrong"):
        client = redis_client(tls_stack.settings(redis_password=password))
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):
                await client.ping()
        finally:
            await client.aclose()
    plain = aioredis.from_url(f"redis://127.0.0.1:{tls_stack.redis_port}/0")
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await plain.ping()
    finally:
        await plain.aclose()


async def test_pipeline_over_tls_as_the_writer(
    tls_stack: DevTlsStack, owner: asyncpg.Connection
) -> None:
    settings = tls_stack.settings()
    schema = settings.pg_schema
    # db-init as the owner (no CREATEROLE: deploy/dev.sh made the roles), over TLS
    init = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams.cli",
        "db-init",
        "--json",
        cwd=REPO,
        env={**os.environ, **settings.to_env(), "SEPSTREAM_LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(init.communicate(), 120)
    assert init.returncode == 0, err.decode()
    assert orjson.loads(out)["separate_roles"] == ["reader", "writer"]
    assert await owner.fetchval(f"SELECT count(*) FROM {schema}.audit_log") == 1

    await ensure_topics(settings)
    log = ARTIFACTS / f"{settings.namespace}-tls-worker.log"
    worker = WorkerProcess(settings, log).start()
    cache = redis_client(settings)
    try:
        start_ns = (time.time_ns() // MIN - 4) * MIN
        generated = synthetic.generate(7, EVENTS, start_ns=start_ns, rate_per_s=20.0)
        async with BatchingProducer(settings, hot_topics(settings)["trades"]) as producer:
            sent = await synthetic.produce(producer, 7, EVENTS, start_ns=start_ns, rate_per_s=20.0)
        assert sent == EVENTS

        async def stored() -> bool:
            try:
                n = await owner.fetchval(f"SELECT count(*) FROM {schema}.ticks")
            except asyncpg.UndefinedTableError:
                return False
            return bool(n == EVENTS)

        async def ticks_state() -> object:
            return await owner.fetchval(f"SELECT count(*) FROM {schema}.ticks")

        await eventually(stored, within=120, describe=ticks_state)

        # cached: every instrument's latest trade, and closed 1m bars, in Redis (TLS + AUTH)
        prefix = settings.redis_prefix
        for inst, cols in generated:
            last = int(cols["ts_event"].argmax())

            async def cached(key: str = f"{prefix}trade:{inst.venue}:{inst.symbol}") -> bool:
                got = await cache.hget(key, "trade_id")
                return got is not None

            await eventually(cached, within=60)
            latest = await cache.hgetall(f"{prefix}trade:{inst.venue}:{inst.symbol}")
            assert int(latest[b"ts_event"]) == int(cols["ts_event"][last])
            assert int(latest[b"trade_id"]) == int(cols["trade_id"][last])

            async def bars_cached(key: str = f"{prefix}bars:1m:{inst.venue}:{inst.symbol}") -> int:
                return int(await cache.zcard(key))

            assert await eventually(bars_cached, within=60) >= 1
        assert await owner.fetchval(f"SELECT count(*) FROM {schema}.bars") > 0

        # who the worker is: only the writer (and the reader) over TLS, never the owner
        mine = await owner.fetchval("SELECT pg_backend_pid()")
        sessions = tls_stack.superuser_rows(
            "SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.datname = 'sepstream' AND a.backend_type = 'client backend' "
            f"AND a.pid NOT IN ({mine}, pg_backend_pid())"
        )
        users = {user for user, _ in sessions}
        assert "sepstream_writer" in users, sessions
        assert users <= {"sepstream_writer", "sepstream_reader"}, sessions
        assert all(ssl == "t" for _, ssl in sessions), sessions

        # Faust's own pages are not served; ours are
        base = f"http://{settings.web_host}:{settings.web_port}"
        async with aiohttp.ClientSession() as http:

            async def healthz() -> bool:
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(healthz, within=30)
            for path in ("/router/", "/table/", "/"):
                async with http.get(base + path) as resp:
                    assert resp.status == 404, path
        assert worker.running
    finally:
        await cache.aclose()
        worker.stop()
    text = log.read_text()
    assert "namespace not provisioned" not in text  # db-init ran: the owner was never used
