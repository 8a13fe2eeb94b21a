"""SQL for the storage layout, edition-aware (DESIGN §4). Pure: returns SQL, runs nothing.

The Apache edition (dev/CI) has hypertables and drop_chunks; compression and retention
policies need the community (``timescale``) license, so they are only emitted for it and
retention otherwise falls back to a scheduled `drop_chunks_sql`.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Final

_IDENT: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
TABLES: Final = ("ticks", "quotes", "bars", "gaps", "signals", "path_library")
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


def policy_ddl(
    schema: str, license_: str, *, compress_after_days: int, tick_retention_days: int | None
) -> list[str]:
    """Compression/retention policies; empty on the Apache edition."""
    if license_ != "timescale":
        return []
    s = check_ident(schema)
    out = []
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


def drop_chunks_sql(schema: str, table: str) -> str:
    """Retention on the Apache edition: run on a schedule with $1 = days to keep."""
    if table not in TABLES:
        raise ValueError(table)
    return (
        f"SELECT drop_chunks('{check_ident(schema)}.{table}', "
        "older_than => now() - make_interval(days => $1))"
    )
