"""TLS for real: verify-full against a private PostgreSQL and Redis that speak TLS only."""

from __future__ import annotations

import ssl
from pathlib import Path

import asyncpg
import pytest
import redis.exceptions

from streams.ops.services import service_versions
from streams.stores.connections import pg_connect, redis_client
from tests.security.conftest import TlsServices


async def test_pg_verify_full_with_the_right_ca(tls_services: TlsServices) -> None:
    conn = await pg_connect(tls_services.settings(), timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
    finally:
        await conn.close()
    assert row is not None and row["ssl"] is True
    assert row["version"].startswith("TLSv1.")


async def test_pg_wrong_ca_is_refused(tls_services: TlsServices, other_ca: Path) -> None:
    settings = tls_services.settings(pg_sslrootcert=str(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await pg_connect(settings, timeout=10)


async def test_pg_wrong_host_name_is_refused(tls_services: TlsServices) -> None:
    dsn = f"postgresql://sepstream@localhost:{tls_services.pg_port}/sepstream"
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await pg_connect(tls_services.settings(pg_dsn=dsn), timeout=10)
    # verify-ca checks the chain only: the same name is then accepted
    conn = await pg_connect(tls_services.settings(pg_dsn=dsn, pg_sslmode="verify-ca"))
    await conn.close()


async def test_pg_plain_connection_is_refused(tls_services: TlsServices) -> None:
    settings = tls_services.settings(pg_sslmode="disable")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await pg_connect(settings, timeout=10)


async def test_redis_verify_full(tls_services: TlsServices, other_ca: Path) -> None:
    good = redis_client(tls_services.settings())
    try:
        assert await good.ping() is True
    finally:
        await good.aclose()
    url = f"rediss://localhost:{tls_services.redis_port}/0"
    for settings, why in (
        (tls_services.settings(redis_ca_file=str(other_ca)), "certificate verify failed"),
        (tls_services.settings(redis_url=url), "Hostname mismatch"),
    ):
        bad = redis_client(settings)
        try:
            with pytest.raises(redis.exceptions.ConnectionError, match=why):
                await bad.ping()
        finally:
            await bad.aclose()


async def test_redis_plain_connection_fails(tls_services: TlsServices) -> None:
    plain = f"redis://127.0.0.1:{tls_services.redis_port}/0"
    with pytest.raises(ValueError, match="rediss://"):  # TLS files with a plain URL: refused
        redis_client(tls_services.settings(redis_url=plain))
    client = redis_client(tls_services.settings(redis_url=plain, redis_ca_file=""))
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()


async def test_status_path_over_tls(tls_services: TlsServices) -> None:
    """`sepstream status`'s own checks reach both services through verify-full TLS."""
    doc = await service_versions(tls_services.settings(kafka_bootstrap="127.0.0.1:1"))
    assert doc["postgres"]["ok"] is True, doc
    assert doc["postgres"]["license"] == "apache"
    assert doc["redis"]["ok"] is True, doc
    assert doc["kafka"]["ok"] is False  # nothing listens there: only the two TLS services
