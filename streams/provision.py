"""Schema provisioning as the owner (`sepstream db-init`): every table, the TimescaleDB
policies, and the writer/reader roles with their grants — what the sinks cannot do for
themselves once they run as a writer without DDL rights (docs/OPERATIONS.md).
"""

from __future__ import annotations

import os
from typing import Any

import structlog

from schemas.ddl import (
    audit_ddl,
    core_ddl,
    grants_ddl,
    indicators_ddl,
    login_role_ddl,
    policy_ddl,
    scram_verifier,
    signals_ddl,
)
from streams.connections import Role, pg_connect, pg_login
from streams.settings import Settings

log = structlog.get_logger(__name__)


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


async def provision(settings: Settings) -> dict[str, Any]:
    """Idempotent; one transaction, serialised with the sinks' own DDL by the same lock.

    Creating a missing role or setting its password needs CREATEROLE; with roles made by a
    DBA and no passwords configured here, the schema owner's rights are enough.
    """
    schema = settings.pg_schema
    roles = separate_roles(settings)
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
            for user, password in roles.values():
                verifier = scram_verifier(password, os.urandom(16)) if password else None
                for sql in login_role_ddl(user, verifier):
                    await conn.execute(sql)
            writer = roles.get("writer", (None, None))[0]
            reader = roles.get("reader", (None, None))[0]
            for sql in grants_ddl(schema, writer=writer, reader=reader):
                await conn.execute(sql)
    finally:
        await conn.close()
    doc = {
        "schema": schema,
        "license": license_,
        "writer": roles.get("writer", (pg_login(settings, "writer")[0], None))[0],
        "reader": roles.get("reader", (pg_login(settings, "reader")[0], None))[0],
        "separate_roles": sorted(roles),
    }
    log.info("schema provisioned", **doc)
    return doc
