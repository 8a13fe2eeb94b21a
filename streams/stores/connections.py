"""Every connection to PostgreSQL and Redis is made here, so TLS, roles and secrets are
configured once (docs/OPERATIONS.md) instead of at each call site.

Passwords travel as separate arguments, never inside a DSN or URL that an exception message
or a log line could carry.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import asyncpg
import redis.asyncio as aioredis

from streams.settings import Settings

Role = Literal["owner", "writer", "reader"]


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
    mode = settings.pg_sslmode  # one of libpq's: checked by the settings
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


async def pg_connect(settings: Settings, role: Role = "owner", **kwargs: Any) -> asyncpg.Connection:
    """One connection as `role`: owner for DDL and admin work, writer for sinks, reader for
    the query path. A writer that may find its namespace unprovisioned connects through
    `streams.stores.provision.writer_connect` instead."""
    conn: asyncpg.Connection = await asyncpg.connect(**_pg_args(settings, role), **kwargs)
    return conn


async def pg_pool(settings: Settings, role: Role, **kwargs: Any) -> asyncpg.Pool:
    """A pool as `role`; kwargs go to `asyncpg.create_pool`. The sinks' writer pools come
    from `streams.stores.provision.writer_pool`, which provisions the namespace first."""
    pool: asyncpg.Pool = await asyncpg.create_pool(**_pg_args(settings, role), **kwargs)
    return pool


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
