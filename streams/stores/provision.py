"""Schema provisioning as the owner (`sepstream db-init`): every table, the TimescaleDB
policies, and the writer/reader grants — what the worker cannot do for itself, since it logs
in as a writer without DDL rights (docs/OPERATIONS.md, "Security defaults").
"""

from __future__ import annotations

import os
from typing import Any, Final

import asyncpg
import structlog

from schemas.ddl import (
    AUDIT_TABLE,
    TABLES,
    audit_ddl,
    check_ident,
    core_ddl,
    grants_ddl,
    indicators_ddl,
    login_role_ddl,
    policy_ddl,
    scram_verifier,
    signals_ddl,
)
from streams.settings import Settings
from streams.stores.connections import Role, pg_connect, pg_login, pg_pool, writer_owns_schema

log = structlog.get_logger(__name__)

# (DSN, schema) pairs this process has provisioned or found provisioned: checked once each.
_PROVISIONED: set[tuple[str, str]] = set()

# Tables of a namespace the writer must be able to write; any one missing (or not granted)
# means the namespace is not provisioned for it.
_MISSING_SQL: Final = """
SELECT t AS name FROM unnest($2::text[]) AS t
 WHERE NOT EXISTS (
       SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relname = t
          AND has_schema_privilege(n.oid, 'USAGE')
          AND has_table_privilege(c.oid, 'INSERT'))
"""


class ProvisionError(RuntimeError):
    """Provisioning cannot go on (a role is missing and the owner may not create it)."""


class NotProvisionedError(RuntimeError):
    """A writer's namespace lacks its tables and the owner may not be used to make them."""


def separate_roles(settings: Settings) -> dict[str, tuple[str, str | None]]:
    """{"writer"|"reader": (user, password)} for the roles configured apart from the owner."""
    owner = pg_login(settings, "owner")[0]
    out: dict[str, tuple[str, str | None]] = {}
    roles: tuple[Role, ...] = ("writer", "reader")
    for role in roles:
        user, password = pg_login(settings, role)
        if user != owner:
            out[role] = (user, password)
    return out


def privileges_ddl(schema: str, *, writer: str | None, reader: str | None) -> list[str]:
    """Least privilege on one schema, idempotent and converging: what the writer and reader
    may do on every table there now and, through default privileges, on tables the owner
    creates there later; rights beyond those are revoked. Ends with `schemas.ddl.grants_ddl`
    (schema USAGE, no CREATE, the append-only audit log).
    """
    s = check_ident(schema)
    out: list[str] = []
    if writer is not None:
        w = check_ident(writer)
        out += [
            f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {s} TO {w}",
            f"REVOKE DELETE, TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA {s} FROM {w}",
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {w}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT, INSERT, UPDATE ON TABLES TO {w}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT USAGE, SELECT ON SEQUENCES TO {w}",
        ]
    if reader is not None:
        r = check_ident(reader)
        out += [
            f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER "
            f"ON ALL TABLES IN SCHEMA {s} FROM {r}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {r}",
        ]
    return out + grants_ddl(schema, writer=writer, reader=reader)


async def _login_roles(
    conn: asyncpg.Connection, owner: str, roles: dict[str, tuple[str, str | None]]
) -> list[str]:
    """Create missing roles and set configured passwords when the owner may manage roles
    (CREATEROLE, or a superuser as in the compose image); returns the roles whose password
    was set. Without that right (the dev owner) the roles must exist already — deploy/dev.sh
    or a DBA made them and keeps their passwords — and are left as they are.
    """
    manages = await conn.fetchval(
        "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
    )
    passwords_set: list[str] = []
    for role, (user, password) in sorted(roles.items()):
        if not manages:
            exists = await conn.fetchval(
                "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", user
            )
            if not exists:
                raise ProvisionError(
                    f"the {role} role {user!r} does not exist and {owner!r} may not create "
                    "roles: deploy/dev.sh creates the dev roles; elsewhere have a DBA create "
                    "it, or give the owner CREATEROLE"
                )
            continue
        verifier = scram_verifier(password, os.urandom(16)) if password else None
        for sql in login_role_ddl(user, verifier):
            await conn.execute(sql)
        if verifier is not None:
            passwords_set.append(role)
    return passwords_set


async def provision(settings: Settings) -> dict[str, Any]:
    """Idempotent; one transaction, serialised with the sinks' own DDL by the same lock."""
    schema = settings.pg_schema
    roles = separate_roles(settings)
    owner = pg_login(settings, "owner")[0]
    conn = await pg_connect(settings, "owner", timeout=10)
    try:
        license_ = await conn.fetchval("SHOW timescaledb.license")
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sepstream-ddl'))")
            for ddl in (core_ddl, signals_ddl, indicators_ddl, audit_ddl):
                await conn.execute(ddl(schema))
            retention = settings.tick_retention_days or None
            for sql in policy_ddl(
                schema,
                license_,
                compress_after_days=settings.compress_after_days,
                tick_retention_days=retention,
            ):
                await conn.execute(sql)
            passwords_set = await _login_roles(conn, owner, roles)
            writer = roles.get("writer", (None, None))[0]
            reader = roles.get("reader", (None, None))[0]
            for sql in privileges_ddl(schema, writer=writer, reader=reader):
                await conn.execute(sql)
    finally:
        await conn.close()
    _PROVISIONED.add((settings.pg_dsn, schema))
    doc = {
        "schema": schema,
        "license": license_,
        "owner": owner,
        "writer": pg_login(settings, "writer")[0],
        "reader": pg_login(settings, "reader")[0],
        "separate_roles": sorted(roles),
        "passwords_set": passwords_set,
    }
    log.info("schema provisioned", **doc)
    return doc


async def missing_tables(settings: Settings) -> list[str]:
    """The namespace's tables the writer cannot write (absent, or not granted to it)."""
    conn = await pg_connect(settings, "writer", timeout=10)
    try:
        rows = await conn.fetch(_MISSING_SQL, settings.pg_schema, [*TABLES, AUDIT_TABLE])
    finally:
        await conn.close()
    return [r["name"] for r in rows]


async def ensure_provisioned(settings: Settings) -> None:
    """Make sure a separate writer finds its namespace's tables, once per process and schema.

    The writer cannot create them (no DDL rights), so a missing namespace is provisioned as
    the owner when SEPSTREAM_PG_AUTO_PROVISION is on and the owner's password is configured
    (the dev defaults); otherwise NotProvisionedError says to run `sepstream db-init`. A
    namespace that is provisioned (db-init ran) never makes this log in as the owner.
    """
    if writer_owns_schema(settings):  # one role for everything: the sinks run their DDL
        return
    key = (settings.pg_dsn, settings.pg_schema)
    if key in _PROVISIONED:
        return
    missing = await missing_tables(settings)
    if missing:
        schema, writer = settings.pg_schema, pg_login(settings, "writer")[0]
        hint = (
            f"run `SEPSTREAM_NAMESPACE={settings.namespace} sepstream db-init` as the owner"
            if settings.namespace
            else "run `sepstream db-init` as the owner"
        )
        if not settings.pg_auto_provision:
            raise NotProvisionedError(
                f"schema {schema!r} is not provisioned for {writer!r} "
                f"(missing or not granted: {', '.join(missing)}): {hint}"
            )
        log.warning(
            "namespace not provisioned: provisioning it as the owner",
            schema=schema,
            missing=missing,
            hint=hint + " beforehand to keep the worker off the owner's credentials",
        )
        try:
            await provision(settings)
        except (asyncpg.PostgresError, ProvisionError) as exc:
            raise NotProvisionedError(
                f"schema {schema!r} is not provisioned for {writer!r} and provisioning it as "
                f"the owner failed ({type(exc).__name__}: {exc}): {hint}"
            ) from exc
    _PROVISIONED.add(key)


async def writer_connect(settings: Settings, **kwargs: Any) -> asyncpg.Connection:
    """A connection as the writer, its namespace provisioned first (`ensure_provisioned`)."""
    await ensure_provisioned(settings)
    return await pg_connect(settings, "writer", **kwargs)


async def writer_pool(settings: Settings, **kwargs: Any) -> asyncpg.Pool:
    """A pool as the writer (the sinks'), its namespace provisioned first."""
    await ensure_provisioned(settings)
    return await pg_pool(settings, "writer", **kwargs)
