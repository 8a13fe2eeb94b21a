"""`sepstream replay --verify`: compare a replay namespace's outputs with the live tables.

A correct replay of the same events through the same pipeline reproduces every output that
depends only on the replayed events — bit for bit, not within a tolerance. Outputs that
also depend on events before the replayed data (a forming bar at the start, an EMA's whole
history) are legitimately different and are not compared; they are counted, so a user sees
what was and was not checked. Precisely, with the range [from, to) and the replayed data
starting at D = from − warm-up, for every (venue, symbol, timeframe) of period p:

- F = the first bar start ≥ D (the first bar whose events were all replayed);
  k(ts) = the number of live bars of the instrument and timeframe with F ≤ start ≤ ts;
  born(key) = live has no bar of it before F (its whole history was replayed).
- bars: every bar with from ≤ start and start + p ≤ to — all value columns.
- signals: every row whose bar is compared and whose window of W = window_size bars lies
  in the replayed data (k ≥ W, or born) — every output column and the library version
  (`backend` and emit stamps are not outputs; live and replay on different backends agree
  only to 1e-9, docs/ARCHITECTURE.md#backends, so run the replay on the live backend to verify it).
- indicators: every row whose bar is compared, `flags` always, and per column where its
  value is a function of replayed bars only: ``sma_n`` when k ≥ n, Bollinger when
  k ≥ bb_period, ``vwap`` when its session began at or after F (`vwap_session_ns`), and
  the recursive ones (EMA, RSI, MACD, ATR, trend, vol_pct, vol_regime: infinite memory,
  they converge towards but never equal values seeded earlier) only when born.

Rows are matched by (venue, symbol, timeframe, ts); a row present on one side only is a
difference of column ``(row)``. Bars must be identical (the same ticks are summed in the
same order). Signal and indicator floats must agree to `FLOAT_RTOL` (a few ulps): the
damping confidence is a matrix product whose last bits depend on how many windows share
the call, and the Bollinger deviation is taken from a pivot in the ring of closes, whose
position depends on how many bars the state has seen — measured: ≤ 1e-14 relative between
live and a correct replay, while one wrong tick moves values by orders of magnitude more.
Integers, booleans and text must be equal; NULL and NaN equal each other.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg

from kernels.indicators import IndicatorConfig, IndicatorState
from schemas.ddl import check_ident
from schemas.events import NS_PER_S, TIMEFRAMES
from streams.settings import Settings
from streams.sinks.signals import COLUMNS as SIGNAL_TABLE_COLUMNS
from streams.sinks.signals import KEY as SIGNAL_KEY
from streams.stores.connections import pg_connect

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
FLOAT_RTOL: Final = 1e-12
BAR_COLUMNS: Final = ("open", "high", "low", "close", "volume", "trades", "vwap", "flags")
# every stored signal column but the key and what legitimately differs between runs
SIGNAL_COLUMNS: Final = tuple(
    c for c in SIGNAL_TABLE_COLUMNS if c not in (*SIGNAL_KEY, "backend", "ts_emit_ns")
)
INDICATOR_CONFIG: Final = IndicatorConfig()  # the fixed config of agents/indicators.py
INDICATOR_COLUMNS: Final = IndicatorState(INDICATOR_CONFIG).output_names
Key = tuple[str, str, str, int]  # venue, symbol, timeframe, bar open time (ns)
Series = tuple[str, str, str]


def _window_need() -> dict[str, int]:
    """Bars an indicator column looks back over, for the finite-window ones."""
    need = {f"sma_{n}": n for n in INDICATOR_CONFIG.sma_periods}
    need.update(dict.fromkeys(("bb_upper", "bb_middle", "bb_lower"), INDICATOR_CONFIG.bb_period))
    return need


FINITE: Final = _window_need()
SESSION: Final = frozenset({"vwap"})
RECURSIVE: Final = frozenset(INDICATOR_COLUMNS) - FINITE.keys() - SESSION


def to_ns(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


def from_ns(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


def iso(ns: int) -> str:
    return from_ns(ns).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Difference:
    table: str
    venue: str
    symbol: str
    timeframe: str
    ts: str
    column: str
    live: Any
    replay: Any


@dataclass
class VerifyReport:
    live_schema: str
    replay_schema: str
    start: str
    end: str
    data_start: str
    compared_rows: dict[str, int] = field(default_factory=dict)
    compared_values: dict[str, int] = field(default_factory=dict)
    not_compared: dict[str, int] = field(default_factory=dict)  # table.column → values
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["difference_count"] = len(self.differences)
        return doc


def _same(a: Any, b: Any, *, exact: bool) -> bool:
    if a is None or b is None:
        nan_a = a is None or (isinstance(a, float) and math.isnan(a))
        nan_b = b is None or (isinstance(b, float) and math.isnan(b))
        return nan_a and nan_b
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if not exact:
            return math.isclose(a, b, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_RTOL)
    return bool(a == b)


def _plain(value: Any) -> Any:
    """JSON-friendly values for the report (floats as they are: repr is exact)."""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class _Verifier:
    def __init__(
        self,
        conn: asyncpg.Connection,
        live: str,
        replay: str,
        *,
        start_ns: int,
        end_ns: int,
        data_start_ns: int,
        symbols: frozenset[str],
    ) -> None:
        self.conn = conn
        self.live, self.replay = check_ident(live), check_ident(replay)
        self.start_ns, self.end_ns, self.data_start_ns = start_ns, end_ns, data_start_ns
        self.symbols = symbols
        self.report = VerifyReport(live, replay, iso(start_ns), iso(end_ns), iso(data_start_ns))
        self._live_bars: dict[Series, list[int]] = {}  # open times in [F, to), sorted
        self._born: dict[Series, bool] = {}

    def first_full(self, timeframe: str) -> int:
        period = TIMEFRAMES[timeframe] * NS_PER_S
        return -(-self.data_start_ns // period) * period

    def inside(self, key: Key) -> bool:
        _, _, tf, ts = key
        return ts >= self.start_ns and ts + TIMEFRAMES[tf] * NS_PER_S <= self.end_ns

    def wanted(self, venue: str, symbol: str) -> bool:
        return not self.symbols or symbol in self.symbols or f"{venue}:{symbol}" in self.symbols

    async def rows(self, schema: str, table: str, columns: tuple[str, ...]) -> dict[Key, Any]:
        if not await self.conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.{table}"):
            return {}
        found = await self.conn.fetch(
            f"SELECT venue, symbol, timeframe, ts, {', '.join(columns)} FROM {schema}.{table} "
            "WHERE ts >= $1 AND ts < $2",
            from_ns(self.start_ns),
            from_ns(self.end_ns),
        )
        out = {}
        for r in found:
            key = (r["venue"], r["symbol"], r["timeframe"], to_ns(r["ts"]))
            if self.wanted(key[0], key[1]) and key[2] in TIMEFRAMES and self.inside(key):
                out[key] = r
        return out

    async def _load_series(self, series: Series) -> None:
        venue, symbol, tf = series
        first = self.first_full(tf)
        exists = await self.conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{self.live}.bars")
        if not exists:
            self._live_bars[series], self._born[series] = [], True
            return
        starts = await self.conn.fetch(
            f"SELECT ts FROM {self.live}.bars WHERE venue = $1 AND symbol = $2 "
            "AND timeframe = $3 AND ts >= $4 AND ts < $5 ORDER BY ts",
            venue,
            symbol,
            tf,
            from_ns(first),
            from_ns(self.end_ns),
        )
        earlier = await self.conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {self.live}.bars WHERE venue = $1 AND symbol = $2 "
            "AND timeframe = $3 AND ts < $4)",
            venue,
            symbol,
            tf,
            from_ns(first),
        )
        self._live_bars[series] = [to_ns(r["ts"]) for r in starts]
        self._born[series] = not earlier

    async def coverage(self, key: Key) -> tuple[int, bool]:
        """(k, born) of the key's instrument and timeframe at its bar (see module doc)."""
        series = key[:3]
        if series not in self._live_bars:
            await self._load_series(series)
        return bisect.bisect_right(self._live_bars[series], key[3]), self._born[series]

    def differ(self, table: str, key: Key, column: str, live: Any, replay: Any) -> None:
        venue, symbol, tf, ts = key
        self.report.differences.append(
            Difference(table, venue, symbol, tf, iso(ts), column, _plain(live), _plain(replay))
        )

    def count(self, table: str, column: str | None, compared: bool) -> None:
        if column is None:
            self.report.compared_rows[table] = self.report.compared_rows.get(table, 0) + 1
        elif compared:
            self.report.compared_values[table] = self.report.compared_values.get(table, 0) + 1
        else:
            name = f"{table}.{column}"
            self.report.not_compared[name] = self.report.not_compared.get(name, 0) + 1

    async def table(self, table: str, columns: tuple[str, ...]) -> None:
        live = await self.rows(self.live, table, columns)
        replay = await self.rows(self.replay, table, columns)
        for key in sorted(live.keys() | replay.keys()):
            k, born = await self.coverage(key)
            if table == "signals":
                window = (live.get(key) or replay[key])["window_size"]
                if not (born or k >= window):
                    self.count(table, "(row)", compared=False)
                    continue
            self.count(table, None, compared=True)
            a, b = live.get(key), replay.get(key)
            if a is None or b is None:
                self.differ(table, key, "(row)", a is not None, b is not None)
                continue
            for column in columns:
                if not self.comparable(table, column, key, k, born):
                    self.count(table, column, compared=False)
                    continue
                self.count(table, column, compared=True)
                if not _same(a[column], b[column], exact=table == "bars"):
                    self.differ(table, key, column, a[column], b[column])

    def comparable(self, table: str, column: str, key: Key, k: int, born: bool) -> bool:
        if table != "indicators" or born or column == "flags":
            return True
        if column in FINITE:
            return k >= FINITE[column]
        if column in SESSION:
            session = INDICATOR_CONFIG.vwap_session_ns
            if session is None:
                return False
            offset = INDICATOR_CONFIG.vwap_session_offset_ns
            began = (key[3] - offset) // session * session + offset
            return began >= self.first_full(key[2])
        return False  # recursive: depends on the history before the replayed data


async def verify(
    live: Settings,
    replay: Settings,
    *,
    start_ns: int,
    end_ns: int,
    data_start_ns: int,
    symbols: frozenset[str] = frozenset(),
) -> VerifyReport:
    """Compare `replay`'s bars, signals and indicators with `live`'s over [start, end)."""
    conn = await pg_connect(live, "reader")
    try:
        verifier = _Verifier(
            conn,
            live.pg_schema,
            replay.pg_schema,
            start_ns=start_ns,
            end_ns=end_ns,
            data_start_ns=data_start_ns,
            symbols=symbols,
        )
        await verifier.table("bars", BAR_COLUMNS)
        await verifier.table("signals", SIGNAL_COLUMNS)
        await verifier.table("indicators", ("flags", *INDICATOR_COLUMNS))
        return verifier.report
    finally:
        await conn.close()
