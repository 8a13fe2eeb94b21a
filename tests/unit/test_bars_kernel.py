"""Bar building: aggregation against a plain reference, merging, watermark, corrections."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.bars import BarBook, aggregate
from schemas.events import BarFlag

MIN = 60_000_000_000


def _reference(
    ts: list[int], price: list[float], size: list[float]
) -> dict[int, tuple[float, ...]]:
    """Per minute: open of earliest ts (first arrived), close of latest (last arrived)."""
    out: dict[int, list[float]] = {}
    for i in sorted(range(len(ts)), key=lambda i: (ts[i], i)):
        start = ts[i] // MIN * MIN
        bar = out.get(start)
        if bar is None:
            out[start] = [price[i], price[i], price[i], price[i], size[i], 1]
        else:
            bar[1] = max(bar[1], price[i])
            bar[2] = min(bar[2], price[i])
            bar[3] = price[i]
            bar[4] += size[i]
            bar[5] += 1
    return {k: tuple(v) for k, v in out.items()}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5 * MIN), st.sampled_from([1.0, 2.0, 3.0, 2.5]), st.floats(0, 5)),
        min_size=1,
        max_size=80,
    ),
    st.integers(1, 7),
)
def test_split_batches_merge_to_the_reference(
    events: list[tuple[int, float, float]], chunks: int
) -> None:
    ts, price, size = (list(x) for x in zip(*events, strict=True))
    book = BarBook(period_ns=MIN, grace_ns=0)
    for part in np.array_split(np.arange(len(ts)), chunks):
        book.add_trades(
            np.array(ts, dtype=np.int64)[part], np.array(price)[part], np.array(size)[part], 0
        )
    got = {
        b.start: (b.open, b.high, b.low, b.close, b.volume, b.trades) for b in book.forming.values()
    }
    want = _reference(ts, price, size)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k][:5], want[k][:5], rtol=1e-12)
        assert got[k][5] == want[k][5]


def test_aggregate_vwap_and_order() -> None:
    bars = aggregate(
        np.array([MIN + 5, 10, MIN + 1], dtype=np.int64),
        np.array([4.0, 1.0, 2.0]),
        np.array([1.0, 2.0, 3.0]),
        MIN,
    )
    assert [b.start for b in bars] == [0, MIN]
    assert bars[1].open == 2.0 and bars[1].close == 4.0
    assert bars[1].vwap == (2.0 * 3 + 4.0 * 1) / 4


def test_bars_close_after_grace_and_when_idle() -> None:
    book = BarBook(period_ns=MIN, grace_ns=2_000_000_000)
    wall = 10**18
    book.add_trades(np.array([10, MIN - 1], dtype=np.int64), np.ones(2), np.ones(2), wall)
    assert book.close_due(None) == []  # watermark = MIN-1 - grace
    # 1 s idle: watermark MIN-1+1s-2s < MIN: still open
    assert book.close_due(wall + 1_000_000_000) == []
    # a lagging consumer is not idle: no wall-clock advance however long it takes
    assert book.close_due(None) == []
    closed = book.close_due(wall + 2_000_000_001)
    assert [b.start for b in closed] == [0]
    assert book.closed_through == MIN


def test_late_tick_corrects_a_closed_bar_and_beyond_horizon_is_reported() -> None:
    book = BarBook(period_ns=MIN, grace_ns=0, horizon=2)
    for m in range(4):
        book.add_trades(np.array([m * MIN + 1], dtype=np.int64), np.ones(1), np.ones(1), 0)
        book.close_due(None)
    assert sorted(book.closed) == [MIN, 2 * MIN]  # horizon keeps the last two closed bars
    fixed, lost = book.add_trades(
        np.array([2 * MIN + 5, 5], dtype=np.int64), np.array([9.0, 9.0]), np.ones(2), 0
    )
    assert lost == 1  # minute 0 fell out of the horizon
    assert len(fixed) == 1 and fixed[0].start == 2 * MIN
    assert fixed[0].high == 9.0 and fixed[0].trades == 2 and fixed[0].flags & BarFlag.CORRECTED


def test_gap_flags_forming_and_closed_bars() -> None:
    book = BarBook(period_ns=MIN, grace_ns=0)
    assert book.mark_gap(MIN + 3) is None  # before any trade: flag waits for the bar
    book.add_trades(np.array([MIN + 5], dtype=np.int64), np.ones(1), np.ones(1), 0)
    assert book.forming[MIN].flags & BarFlag.GAP
    book.add_trades(np.array([3 * MIN], dtype=np.int64), np.ones(1), np.ones(1), 0)
    book.close_due(None)
    again = book.mark_gap(MIN + 7)
    assert again is None  # already flagged: nothing to re-emit


def test_state_round_trip_resumes_identically() -> None:
    book = BarBook(period_ns=MIN, grace_ns=0)
    book.add_trades(np.array([5, MIN + 5], dtype=np.int64), np.array([1.0, 2.0]), np.ones(2), 0)
    book.close_due(None)
    restored = BarBook.from_state(
        book.to_state(), period_ns=MIN, grace_ns=0, horizon=1440, wall_ns=0
    )
    assert restored.forming == book.forming
    assert restored.closed_through == book.closed_through and restored.max_ts == book.max_ts
