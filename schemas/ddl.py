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
TABLES: Final = (
    "ticks",
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


def drop_chunks_sql(schema: str, table: str) -> str:
    """Retention on the Apache edition: run on a schedule with $1 = days to keep."""
    if table not in TABLES:
        raise ValueError(table)
    return (
        f"SELECT drop_chunks('{check_ident(schema)}.{table}', "
        "older_than => now() - make_interval(days => $1))"
    )
