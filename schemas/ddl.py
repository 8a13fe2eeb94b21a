"""SQL for the storage layout, edition-aware (docs/ARCHITECTURE.md#editions). Pure: returns SQL,
runs nothing.

The Apache edition (dev/CI) has hypertables and drop_chunks; compression and retention
policies need the community (``timescale``) license, so they are only emitted for it and
retention otherwise falls back to a scheduled `drop_chunks_sql`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from importlib.resources import files
from typing import Final

_IDENT: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
TABLES: Final = (
    "ticks",
    "trade_ids",
    "quotes",
    "bars",
    "gaps",
    "signals",
    "path_library",
    "indicators",
)
# Columns of every natural key, which compression must keep in segmentby/orderby.
_COMPRESSION: Final[dict[str, tuple[str, str]]] = {
    "ticks": ("venue, symbol", "ts DESC, trade_id"),
    "quotes": ("venue, symbol", "ts DESC, ts_event_ns, seq"),
    "bars": ("venue, symbol, timeframe", "ts DESC"),
}


def check_ident(name: str) -> str:
    """Schema names come from settings/namespaces and are interpolated: allow only idents."""
    if not _IDENT.match(name):
        raise ValueError(f"not a safe SQL identifier: {name!r}")
    return name


def core_ddl(schema: str) -> str:
    text = files("schemas").joinpath("sql/core.sql").read_text()
    return text.replace("{schema}", check_ident(schema))


def signals_ddl(schema: str) -> str:
    """`signals` and `path_library` (sql/signals.sql), idempotent; created by their writers."""
    text = files("schemas").joinpath("sql/signals.sql").read_text()
    return text.replace("{schema}", check_ident(schema))


def indicators_ddl(schema: str) -> str:
    """`indicators` (sql/indicators.sql), idempotent; created by the indicator sink's writer."""
    text = files("schemas").joinpath("sql/indicators.sql").read_text()
    return text.replace("{schema}", check_ident(schema))


def policy_ddl(
    schema: str, license_: str, *, compress_after_days: int, tick_retention_days: int | None
) -> list[str]:
    """Compression/retention policies and the continuous aggregates; empty on Apache."""
    if license_ != "timescale":
        return []
    s = check_ident(schema)
    out = continuous_aggregate_ddl(s, license_)
    for table, (segment_by, order_by) in _COMPRESSION.items():
        out.append(
            f"ALTER TABLE {s}.{table} SET (timescaledb.compress, "
            f"timescaledb.compress_segmentby = '{segment_by}', "
            f"timescaledb.compress_orderby = '{order_by}')"
        )
        out.append(
            f"SELECT add_compression_policy('{s}.{table}', "
            f"INTERVAL '{int(compress_after_days)} days', if_not_exists => TRUE)"
        )
    if tick_retention_days is not None:
        for table in ("ticks", "quotes"):
            out.append(
                f"SELECT add_retention_policy('{s}.{table}', "
                f"INTERVAL '{int(tick_retention_days)} days', if_not_exists => TRUE)"
            )
    return out


# Higher timeframes as continuous aggregates over the stored 1m bars (community edition):
# a SQL-side cross-check of the bars rolled up in the stream, refreshed by a policy.
CAGG_TIMEFRAMES: Final = {"5m": "5 minutes", "15m": "15 minutes", "1h": "1 hour"}


def cagg_select(schema: str, interval: str) -> str:
    """The rollup query of one continuous aggregate (plain SQL: Apache can run it too)."""
    s = check_ident(schema)
    return (
        f"SELECT time_bucket(INTERVAL '{interval}', ts) AS ts, venue, symbol, "
        "first(open, ts) AS open, max(high) AS high, min(low) AS low, "
        "last(close, ts) AS close, sum(volume) AS volume, sum(trades) AS trades, "
        "bit_or(flags) AS flags "
        f"FROM {s}.bars WHERE timeframe = '1m' "
        f"GROUP BY time_bucket(INTERVAL '{interval}', ts), venue, symbol"
    )


def continuous_aggregate_ddl(schema: str, license_: str) -> list[str]:
    """`bars_5m_cagg`, `bars_15m_cagg`, `bars_1h_cagg`; empty on the Apache edition.

    WITH NO DATA so that it may run inside the DDL transaction; the refresh policy fills
    them (the last 3 days, up to one bucket ago).
    """
    if license_ != "timescale":
        return []
    s = check_ident(schema)
    out = []
    for tf, interval in CAGG_TIMEFRAMES.items():
        view = f"{s}.bars_{tf}_cagg"
        out.append(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view} "
            f"WITH (timescaledb.continuous) AS {cagg_select(s, interval)} WITH NO DATA"
        )
        out.append(
            f"SELECT add_continuous_aggregate_policy('{view}', "
            f"start_offset => INTERVAL '3 days', end_offset => INTERVAL '{interval}', "
            f"schedule_interval => INTERVAL '{interval}', if_not_exists => TRUE)"
        )
    return out


def prune_trade_ids_sql(schema: str) -> str:
    """Forget trade ids older than the ticks kept ($1 = days), with the ticks' retention."""
    return (
        f"DELETE FROM {check_ident(schema)}.trade_ids "
        f"WHERE ts < now() - make_interval(days => $1::int)"
    )


def drop_chunks_sql(schema: str, table: str) -> str:
    """Retention on the Apache edition: run on a schedule with $1 = days to keep."""
    if table not in TABLES:
        raise ValueError(table)
    return (
        f"SELECT drop_chunks('{check_ident(schema)}.{table}', "
        "older_than => now() - make_interval(days => $1))"
    )


AUDIT_TABLE: Final = "audit_log"


def audit_ddl(schema: str) -> str:
    """`audit_log` (sql/audit.sql), idempotent."""
    text = files("schemas").joinpath("sql/audit.sql").read_text()
    return text.replace("{schema}", check_ident(schema))


def scram_verifier(password: str, salt: bytes, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 password verifier (what `pg_authid` stores, RFC 5803).

    `ALTER ROLE … PASSWORD '<verifier>'` sets a password without its clear text ever being
    in a statement, so it cannot end up in the server log. PostgreSQL SASLprep-normalises
    passwords; for ASCII that is the identity, so other passwords are refused here.
    """
    if not password or not password.isascii():
        raise ValueError("role passwords must be non-empty ASCII")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def login_role_ddl(role: str, verifier: str | None) -> list[str]:
    """Create a LOGIN role if missing (needs CREATEROLE), and set its password if one is given.

    Roles are cluster-wide, so one writer/reader pair can serve every namespace's schema.
    """
    r = check_ident(role)
    out = [
        f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{r}') "
        f"THEN CREATE ROLE {r} LOGIN; END IF; END$$"
    ]
    if verifier is not None:
        if not verifier.startswith("SCRAM-SHA-256$") or "'" in verifier:
            raise ValueError("not a SCRAM-SHA-256 verifier")
        out.append(f"ALTER ROLE {r} WITH LOGIN PASSWORD '{verifier}'")
    return out


def grants_ddl(schema: str, *, writer: str | None, reader: str | None) -> list[str]:
    """Least privilege on one namespace's schema, idempotent; run by the schema owner after
    every table exists.

    writer (the sinks): USAGE on the schema, SELECT/INSERT/UPDATE on the data tables, DELETE
    on `trade_ids` only (its pruning), INSERT and SELECT on the audit log; no CREATE, so no
    DDL. reader (the query path): SELECT only.
    Both lose any CREATE on the schema they may have been given.
    """
    s = check_ident(schema)
    out = []
    if writer is not None:
        w = check_ident(writer)
        out += [
            f"GRANT USAGE ON SCHEMA {s} TO {w}",
            f"REVOKE CREATE ON SCHEMA {s} FROM {w}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {w}",
            f"GRANT INSERT, UPDATE ON {', '.join(f'{s}.{t}' for t in TABLES)} TO {w}",
            f"REVOKE UPDATE, DELETE, TRUNCATE ON {s}.{AUDIT_TABLE} FROM {w}",
            f"GRANT INSERT ON {s}.{AUDIT_TABLE} TO {w}",
            f"GRANT DELETE ON {s}.trade_ids TO {w}",  # pruned with the ticks' retention
        ]
    if reader is not None:
        r = check_ident(reader)
        out += [
            f"GRANT USAGE ON SCHEMA {s} TO {r}",
            f"REVOKE CREATE ON SCHEMA {s} FROM {r}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}",
        ]
    return out
