"""The audit trail of admin actions: who replayed, trained, reset offsets or changed
subscriptions, when, and with what. Each action is one structlog event (`audit`) and one row
in the namespace schema's `audit_log`, written as the writer role, which may only append.
"""

from __future__ import annotations

import getpass
import os
import socket
from typing import Any

import orjson
import structlog

from schemas.ddl import AUDIT_TABLE, audit_ddl, check_ident
from streams.settings import Settings
from streams.stores.connections import writer_owns_schema
from streams.stores.provision import writer_connect

log = structlog.get_logger("sepstream.audit")


def os_user() -> str:
    """The operator: the OS login running the command (SUDO_USER behind sudo)."""
    try:
        return getpass.getuser()
    except OSError:  # no login name for this uid (a bare container)
        return f"uid:{os.getuid()}"


async def audit(
    settings: Settings,
    action: str,
    actor: str | None = None,
    details: dict[str, Any] | None = None,
) -> int:
    """Record `action` by `actor` (default: the OS user); returns the audit row's id.

    The event is logged before the row is written, so an action whose row cannot be stored
    (PostgreSQL down, no grant) still leaves a trace, and the error is raised to the caller.
    """
    who = actor or os_user()
    doc = details or {}
    host = socket.gethostname()
    log.info(
        "audit", action=action, actor=who, host=host, namespace=settings.namespace, details=doc
    )
    schema = check_ident(settings.pg_schema)
    conn = await writer_connect(settings, timeout=10)
    try:
        if writer_owns_schema(settings):  # else `sepstream db-init` created it
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sepstream-ddl'))")
                await conn.execute(audit_ddl(schema))
        row_id: int = await conn.fetchval(
            f"INSERT INTO {schema}.{AUDIT_TABLE} (action, actor, host, namespace, details) "
            "VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id",
            action,
            who,
            host,
            settings.namespace,
            orjson.dumps(doc, default=str).decode(),
        )
    except Exception as exc:
        log.error("audit row not written", action=action, actor=who, error=repr(exc))
        raise
    finally:
        await conn.close()
    return row_id
