"""Higher-timeframe bars rolled up from closed 1m bars equal bars built straight from ticks.

Random ticks arrive in chunks, slightly out of order (so some 1m bars are corrected after
they closed, and with them their 5m/15m/1h bars), or in order with a state round trip in
the middle (a restarted worker). The last emitted version of every bar of every timeframe
must be the bar a direct aggregation of all the ticks gives.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.bars import Bar, BarBook, MultiBook, aggregate
from schemas.events import BarFlag

MIN = 60_000_000_000
PERIODS = {"5m": 5 * MIN, "15m": 15 * MIN, "1h": 60 * MIN}


def _book(state: dict[str, object] | None = None) -> MultiBook:
    if state is None:
        return MultiBook.new(BarBook(period_ns=MIN, grace_ns=0), "1m", PERIODS, keep_ns=1440 * MIN)
    base = BarBook.from_state(state, period_ns=MIN, grace_ns=0, horizon=1440, wall_ns=0)
    return MultiBook.from_state(
        state, base=base, base_tf="1m", periods_ns=PERIODS, keep_ns=1440 * MIN
    )


@pytest.mark.parametrize(("seed", "restart"), [(0, False), (1, False), (2, True), (3, True)])
def test_rollups_equal_bars_from_ticks(seed: int, restart: bool) -> None:
    rng = np.random.default_rng(seed)
    n = 4000
    ts = np.unique(rng.integers(0, 150 * MIN, n)).astype(np.int64)
    ts = ts[rng.random(ts.size) > 0.15 * (ts // (7 * MIN) % 2)]  # some empty stretches
    # Local disorder: each tick may arrive up to ~90 s late (the first one stays first).
    # Not with a restart: the corrections cache does not survive one (best effort).
    late = 0.0 if restart else 0.05
    arrival = ts + rng.integers(0, 90_000_000_000, ts.size) * (rng.random(ts.size) < late)
    arrival[0] = -1
    order = np.argsort(arrival, kind="stable")
    ts = ts[order]
    price = np.round(100 + np.cumsum(rng.normal(0, 0.1, ts.size)), 2)
    size = rng.uniform(0.01, 2.0, ts.size)

    book = _book()
    last: dict[tuple[str, int], Bar] = {}
    emitted_twice: set[tuple[str, int]] = set()

    def take(out: dict[str, list[Bar]]) -> None:
        for tf, bars in out.items():
            for b in bars:
                if (tf, b.start) in last:
                    emitted_twice.add((tf, b.start))
                # a copy: the book keeps mutating its closed bars for later corrections
                last[(tf, b.start)] = Bar(**{f: getattr(b, f) for f in Bar.__slots__})

    chunks = np.array_split(np.arange(ts.size), 97)
    for k, part in enumerate(chunks):
        fixed, lost = book.add_trades(ts[part], price[part], size[part], 0)
        assert lost == 0
        take(fixed)
        take(book.close_due(None))
        if restart and k == 40:  # a restart: the corrections cache is lost, the rest is state
            book = _book(book.to_state())
    take(book.close_due(10**30))  # idle forever: everything closes

    for tf, period in {"1m": MIN, **PERIODS}.items():
        want = {b.start: b for b in aggregate(ts, price, size, period)}
        got = {start: b for (t, start), b in last.items() if t == tf}
        assert got.keys() == want.keys(), tf
        for start, w in want.items():
            g = got[start]
            assert (g.open, g.high, g.low, g.close, g.trades) == (
                w.open,
                w.high,
                w.low,
                w.close,
                w.trades,
            ), (tf, start)
            assert np.isclose(g.volume, w.volume, rtol=1e-12), (tf, start)
            assert np.isclose(g.notional, w.notional, rtol=1e-12), (tf, start)
            assert (g.first_ts, g.last_ts) == (w.first_ts, w.last_ts)
            assert not g.flags & BarFlag.GAP
            if (tf, start) in emitted_twice:
                assert g.flags & BarFlag.CORRECTED, (tf, start)
    if not restart:
        assert any(tf != "1m" for tf, _ in emitted_twice), "no rollup correction exercised"


def test_rollup_closes_with_the_1m_watermark_and_carries_gaps() -> None:
    book = _book()
    book.mark_gap(2 * MIN + 1)  # before any trade: the 1m and 5m bars are flagged later
    for m in range(6):
        book.add_trades(np.array([m * MIN + 5], dtype=np.int64), np.ones(1), np.ones(1), 0)
        out = book.close_due(None)
        assert "5m" not in out or m == 5
    assert book.rollups["5m"].closed[0].flags & BarFlag.GAP
    assert book.rollups["5m"].closed[0].trades == 5
    # a gap marker on a closed 5m bar re-emits it, flagged and corrected
    book.add_trades(np.array([11 * MIN], dtype=np.int64), np.ones(1), np.ones(1), 0)
    book.close_due(None)
    again = book.mark_gap(5 * MIN + 3)
    assert again["1m"][0].flags == BarFlag.GAP | BarFlag.CORRECTED
    assert (
        again["5m"][0].start == 5 * MIN and again["5m"][0].flags == BarFlag.GAP | BarFlag.CORRECTED
    )
    assert "15m" not in again  # the 15m bar is still forming: flagged, not re-emitted
    assert book.rollups["15m"].forming[0].flags & BarFlag.GAP


def test_continuous_aggregates_only_on_community_edition() -> None:
    from schemas.ddl import continuous_aggregate_ddl, policy_ddl

    assert continuous_aggregate_ddl("ns1", "apache") == []
    assert policy_ddl("ns1", "apache", compress_after_days=7, tick_retention_days=None) == []
    sql = continuous_aggregate_ddl("ns1", "timescale")
    views = [s for s in sql if s.startswith("CREATE MATERIALIZED VIEW")]
    assert [v.split()[6] for v in views] == [f"ns1.bars_{tf}_cagg" for tf in ("5m", "15m", "1h")]
    assert all("WITH NO DATA" in v and "timeframe = '1m'" in v for v in views)
    assert sum("add_continuous_aggregate_policy" in s for s in sql) == 3
    full = policy_ddl("ns1", "timescale", compress_after_days=7, tick_retention_days=None)
    assert full[: len(sql)] == sql
    with pytest.raises(ValueError):
        continuous_aggregate_ddl("x; DROP", "timescale")
