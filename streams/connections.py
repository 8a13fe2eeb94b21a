"""Every connection to PostgreSQL, Redis and Kafka is made here, so TLS, roles and secrets are
configured once (docs/OPERATIONS.md) instead of at each call site.

Passwords travel as separate arguments, never inside a DSN or URL that an exception message
or a log line could carry.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import asyncpg
import faust
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import CredentialsT

from streams.settings import Settings

Role = Literal["owner", "writer", "reader"]
PG_SSLMODES = ("", "disable", "allow", "prefer", "require", "verify-ca", "verify-full")
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


# --------------------------------------------------------------------------- PostgreSQL


def pg_login(settings: Settings, role: Role = "owner") -> tuple[str, str | None]:
    """(user, password) of a role. The owner is the DSN's user; writer and reader default to it.

    A password written into the DSN wins over SEPSTREAM_PG_PASSWORD, as in `dsn_with_password`.
    """
    parts = urlsplit(settings.pg_dsn)
    owner = unquote(parts.username or "")
    owner_password = unquote(parts.password) if parts.password else settings.pg_password
    if role == "writer" and settings.pg_writer_user:
        return settings.pg_writer_user, settings.pg_writer_password or None
    if role == "reader" and settings.pg_reader_user:
        return settings.pg_reader_user, settings.pg_reader_password or None
    return owner, owner_password or None


def writer_owns_schema(settings: Settings) -> bool:
    """True when the sinks log in as the schema owner and so may run the DDL themselves.

    With a separate writer role the owner applies it beforehand (`sepstream db-init`).
    """
    return pg_login(settings, "writer")[0] == pg_login(settings, "owner")[0]


def pg_ssl(settings: Settings) -> ssl.SSLContext | str | None:
    """What asyncpg's `ssl=` gets for SEPSTREAM_PG_SSLMODE (libpq's sslmode semantics).

    None leaves it to the DSN (`?sslmode=`) and asyncpg's default, `prefer`.
    """
    mode = settings.pg_sslmode.strip().lower()
    if mode not in PG_SSLMODES:
        raise ValueError(f"SEPSTREAM_PG_SSLMODE: unknown sslmode {settings.pg_sslmode!r}")
    if not mode:
        return None
    if mode in ("disable", "allow", "prefer"):
        return mode
    ctx = ssl.create_default_context(cafile=settings.pg_sslrootcert or None)
    if mode == "require":  # encrypted, but neither the CA nor the host name is checked
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif mode == "verify-ca":
        ctx.check_hostname = False
    if settings.pg_sslcert:
        ctx.load_cert_chain(settings.pg_sslcert, settings.pg_sslkey or None)
    return ctx


def _pg_args(settings: Settings, role: Role) -> dict[str, Any]:
    user, password = pg_login(settings, role)
    args: dict[str, Any] = {"dsn": settings.pg_dsn, "user": user, "password": password}
    tls = pg_ssl(settings)
    if tls is not None:
        args["ssl"] = tls
    return args


async def pg_connect(
    settings: Settings, role: Role = "owner", *, provisioned: bool = True, **kwargs: Any
) -> asyncpg.Connection:
    """One connection as `role`: owner for DDL and admin work, writer for sinks, reader for
    the query path.

    A writer has no DDL rights, so before its first connection to a namespace the schema is
    checked and, if missing, provisioned (`streams.provision.ensure_provisioned`); the check
    itself connects with `provisioned=False`.
    """
    if role == "writer" and provisioned:
        from streams.provision import ensure_provisioned  # provision imports this module

        await ensure_provisioned(settings)
    conn: asyncpg.Connection = await asyncpg.connect(**_pg_args(settings, role), **kwargs)
    return conn


async def pg_pool(settings: Settings, role: Role = "writer", **kwargs: Any) -> asyncpg.Pool:
    """A pool as `role` (default: the sinks' writer, its namespace provisioned first, as in
    `pg_connect`); kwargs go to `asyncpg.create_pool`."""
    if role == "writer":
        from streams.provision import ensure_provisioned

        await ensure_provisioned(settings)
    pool: asyncpg.Pool = await asyncpg.create_pool(**_pg_args(settings, role), **kwargs)
    return pool


# --------------------------------------------------------------------------- Redis


def redis_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for redis-py: the password, and TLS verification for `rediss://`.

    TLS files with a plain `redis://` URL are refused rather than silently ignored.
    """
    opts: dict[str, Any] = {}
    if settings.redis_password:
        opts["password"] = settings.redis_password
    tls_files = (settings.redis_ca_file, settings.redis_cert_file, settings.redis_key_file)
    if urlsplit(settings.redis_url).scheme == "rediss":
        opts["ssl_cert_reqs"] = "required"
        opts["ssl_check_hostname"] = True
        if settings.redis_ca_file:
            opts["ssl_ca_certs"] = settings.redis_ca_file
        if settings.redis_cert_file:
            opts["ssl_certfile"] = settings.redis_cert_file
            opts["ssl_keyfile"] = settings.redis_key_file or None
    elif any(tls_files):
        raise ValueError("SEPSTREAM_REDIS_CA/CERT/KEY_FILE need a rediss:// SEPSTREAM_REDIS_URL")
    return opts


def redis_client(settings: Settings, **kwargs: Any) -> aioredis.Redis:
    """A client (lazy: connects on its first command); kwargs go to `Redis.from_url`."""
    client: aioredis.Redis = aioredis.from_url(
        settings.redis_url, **{**redis_options(settings), **kwargs}
    )
    return client


# --------------------------------------------------------------------------- Kafka


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the broker against SEPSTREAM_KAFKA_SSL_CAFILE (else the system's CAs); a
    client certificate when one is configured (mutual TLS)."""
    ctx: ssl.SSLContext = create_ssl_context(
        cafile=settings.kafka_ssl_cafile or None,
        certfile=settings.kafka_ssl_certfile or None,
        keyfile=settings.kafka_ssl_keyfile or None,
    )
    return ctx


def kafka_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's `broker_credentials` for SEPSTREAM_KAFKA_SECURITY_PROTOCOL; None = PLAINTEXT."""
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol not in KAFKA_PROTOCOLS:
        raise ValueError(f"SEPSTREAM_KAFKA_SECURITY_PROTOCOL: unknown {protocol!r}")
    if protocol == "PLAINTEXT":
        return None
    tls = kafka_ssl_context(settings) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(tls)
    if not settings.kafka_sasl_username or not settings.kafka_sasl_password:
        raise ValueError(
            f"{protocol} needs SEPSTREAM_KAFKA_SASL_USERNAME and "
            "SEPSTREAM_KAFKA_SASL_PASSWORD (or SEPSTREAM_KAFKA_SASL_PASSWORD_FILE)"
        )
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        ssl_context=tls,
        mechanism=settings.kafka_sasl_mechanism.strip().upper(),
    )


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments for every aiokafka client we create (producer, consumer,
    admin): Faust's own mapping of the same credentials, so both always agree."""
    return dict(credentials_to_aiokafka_auth(kafka_credentials(settings)))


type KafkaClient = AIOKafkaConsumer | AIOKafkaProducer | AIOKafkaAdminClient


async def start_client(client: KafkaClient, finish_s: float = 5.0) -> None:
    """`client.start()`; a start that fails, or whose caller is cancelled, closes the client
    before raising, so callers need no cleanup of their own for the start.

    A cancelled caller first lets the start finish (for up to `finish_s`): cancelled
    half-way through its bootstrap, aiokafka drops the bootstrap connection unclosed
    ("Unclosed AIOKafkaConnection" at exit), which a worker stopped during its start did.
    """
    starting = asyncio.ensure_future(client.start())
    try:
        await asyncio.shield(starting)
    except BaseException:
        if not starting.done():
            await asyncio.wait([starting], timeout=finish_s)
            starting.cancel()  # a no-op once it finished
        if starting.done() and not starting.cancelled():
            starting.exception()  # retrieved: what the caller gets is what counts
        if isinstance(client, AIOKafkaConsumer):
            await stop_consumer(client)
        elif isinstance(client, AIOKafkaProducer):
            await client.stop()
        else:
            await client.close()
        raise


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """`consumer.stop()`, made safe right after (or during) `start()`.

    aiokafka's stop cancels a background task of the offsets coordinator and awaits it; if
    that task never ran a step, the await raises CancelledError and stop() gives up before
    closing the client, whose metadata task and connections then live on (aio-libs/aiokafka
    #647). One pass of the event loop first lets the task start, so it ends cleanly.
    """
    await asyncio.sleep(0)
    await consumer.stop()
