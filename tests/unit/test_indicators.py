"""kernels.indicators: TA-Lib parity on long interleaved series, persistence, trend/regime.

The parity tests feed several instruments bar by bar in an interleaved, uneven order
(random subsets per call, some instruments advancing faster than others) and compare each
instrument's whole output series with TA-Lib run over that instrument's series in one go.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from kernels.indicators import NS_PER_DAY, IndicatorConfig, IndicatorState

F64 = NDArray[np.float64]
MINUTE = 60 * 1_000_000_000
T0 = 1_767_225_600 * 1_000_000_000 + 17 * 3_600 * 1_000_000_000  # 2026-01-01 17:00 UTC
RTOL = 1e-9


@dataclass
class Series:
    """One instrument's bars, in order."""

    ts: NDArray[np.int64]
    o: F64
    h: F64
    low: F64
    c: F64
    v: F64

    @property
    def n(self) -> int:
        return int(self.c.size)


def make_series(
    seed: int,
    n: int,
    level: float,
    *,
    flat: tuple[tuple[int, int], ...] = (),
    up_run: tuple[int, int] | None = None,
    gap_at: int | None = None,
    zero_volume: tuple[tuple[int, int], ...] = (),
) -> Series:
    """Random-walk OHLCV with volatility regimes, plus the edge cases asked for.

    ``flat``: [start, stop) ranges where o = h = l = c (zero variance, zero moves);
    ``up_run``: a strictly rising stretch (RSI with no losses); ``gap_at``: three days of
    missing bars and a +20 % price jump; ``zero_volume``: ranges with volume 0.
    """
    rng = np.random.default_rng(seed)
    sigma = np.repeat(rng.choice([0.002, 0.006, 0.02], size=n // 500 + 1), 500)[:n]
    ret = rng.normal(0.0, 1.0, n) * sigma
    if up_run is not None:
        ret[up_run[0] : up_run[1]] = np.abs(ret[up_run[0] : up_run[1]]) + 1e-4
    if gap_at is not None:
        ret[gap_at] += np.log(1.2)
    c = level * np.exp(np.cumsum(ret))
    o = np.empty(n)
    o[0] = level
    o[1:] = c[:-1] * (1 + rng.normal(0, 0.0005, n - 1))
    h = np.maximum(o, c) * (1 + np.abs(rng.normal(0, 0.003, n)))
    low = np.minimum(o, c) * (1 - np.abs(rng.normal(0, 0.003, n)))
    for a, b in flat:
        px = c[a - 1] if a > 0 else c[0]
        o[a:b] = h[a:b] = low[a:b] = c[a:b] = px
    v = rng.gamma(2.0, 50.0, n)
    for a, b in zero_volume:
        v[a:b] = 0.0
    ts = T0 + MINUTE * np.arange(n, dtype=np.int64)
    if gap_at is not None:
        ts[gap_at:] += 3 * NS_PER_DAY + 17 * MINUTE
    return Series(ts, o, h, low, c, v)


N_BARS = 12_000
SERIES = [
    # 0: mid price, a 700-bar flat run, a short flat run, a gap with a price jump
    make_series(1, N_BARS, 100.0, flat=((3000, 3700), (5000, 5030)), gap_at=8000),
    # 1: BTC-like level, flat from the very first bar, then a rising run
    make_series(2, N_BARS, 25_000.0, flat=((0, 60),), up_run=(60, 120)),
    # 2: sub-cent level, no volume at the start and for 40 bars from a session start
    # (T0 is 17:00 UTC, so bar 420 + 1440·d opens a UTC day)
    make_series(3, N_BARS, 0.0005, zero_volume=((0, 25), (1860, 1900))),
    # 3: FX-like level, a 2,000-bar flat run and a gap
    make_series(4, N_BARS, 1.1, flat=((4000, 6000),), gap_at=9000),
    # 4: a shorter series (instruments do not all have the same history length)
    make_series(5, 10_500, 3_000.0, flat=((100, 140),)),
]
RATES = [1.0, 0.55, 0.3, 0.8, 0.45]


def drive(
    state: IndicatorState,
    slots: NDArray[np.intp],
    series: list[Series],
    seed: int,
    *,
    max_batch: int | None = None,
) -> list[dict[str, F64]]:
    """Feed every series through ``state`` in a random interleaved order; collect outputs."""
    rng = np.random.default_rng(seed)
    lens = np.array([s.n for s in series])
    res = {k: np.full((len(series), lens.max()), np.nan) for k in state.output_names}
    pos = np.zeros(len(series), dtype=np.int64)
    rates = np.array(RATES[: len(series)])
    # bars as (instrument, bar) matrices so one fancy index picks a call's bars
    fields = [np.zeros((len(series), lens.max())) for _ in range(5)]
    tsm = np.zeros((len(series), lens.max()), dtype=np.int64)
    for i, s in enumerate(series):
        tsm[i, : s.n] = s.ts
        for f, x in zip(fields, (s.o, s.h, s.low, s.c, s.v), strict=True):
            f[i, : s.n] = x
    while (pos < lens).any():
        live = np.flatnonzero((pos < lens) & (rng.random(len(series)) < rates))
        if live.size == 0:
            continue
        rng.shuffle(live)
        if max_batch is not None:
            live = live[: max(1, int(rng.integers(1, max_batch + 1)))]
        p = pos[live]
        out = state.update(slots[live], tsm[live, p], *(f[live, p] for f in fields))
        for name, vals in out.items():
            assert vals.shape == (live.size,)
            res[name][live, p] = vals
        pos[live] += 1
    return [{k: res[k][i, : s.n] for k in res} for i, s in enumerate(series)]


@pytest.fixture(scope="module")
def interleaved() -> tuple[IndicatorState, list[dict[str, F64]]]:
    """All SERIES through one state, slots in a shuffled order, 3 extra idle slots."""
    state = IndicatorState(capacity=2)  # forces growth while adding
    state.add_instruments(3)
    slots = state.add_instruments(len(SERIES))[::-1].copy()
    return state, drive(state, slots, SERIES, seed=42)


def assert_series_close(name: str, ours: F64, ref: F64) -> None:
    """Same NaN positions; elsewhere |ours − ref| ≤ 1e-9·|ref| (so ref 0 needs exact 0)."""
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{name}: NaN mask")
    m = ~np.isnan(ref)
    err = np.abs(ours[m] - ref[m])
    bound = RTOL * np.abs(ref[m])
    worst = int(np.argmax(err - bound)) if err.size else 0
    assert (err <= bound).all(), (
        f"{name}: max excess at valid #{worst}: ours={ours[m][worst]!r} ref={ref[m][worst]!r}"
    )


def _head(s: Series, n: int) -> Series:
    return Series(s.ts[:n], s.o[:n], s.h[:n], s.low[:n], s.c[:n], s.v[:n])


def talib_reference(s: Series, cfg: IndicatorConfig) -> dict[str, F64]:
    """Every output computed by TA-Lib (or, for VWAP sessions/trend/regime, from TA-Lib)."""
    talib = pytest.importorskip("talib")
    ref: dict[str, F64] = {}
    for n in cfg.sma_periods:
        ref[f"sma_{n}"] = talib.SMA(s.c, n)
    for n in sorted({*cfg.ema_periods, cfg.trend_fast, cfg.trend_slow}):
        ref[f"ema_{n}"] = talib.EMA(s.c, n)
    ref["rsi"] = talib.RSI(s.c, cfg.rsi_period)
    ref["macd"], ref["macd_signal"], ref["macd_hist"] = talib.MACD(
        s.c, cfg.macd_fast, cfg.macd_slow, cfg.macd_signal
    )
    ref["bb_upper"], ref["bb_middle"], ref["bb_lower"] = talib.BBANDS(
        s.c, cfg.bb_period, cfg.bb_k, cfg.bb_k, 0
    )
    ref["atr"] = talib.ATR(s.h, s.low, s.c, cfg.atr_period)
    # VWAP: TA-Lib's cumulative VWAP restarted at every UTC day; TA-Lib gives 0 while
    # the volume so far is 0, we give NaN (no price has traded: there is no VWAP).
    assert cfg.vwap_session_ns is not None
    day = (s.ts - cfg.vwap_session_offset_ns) // cfg.vwap_session_ns
    vwap = np.empty(s.n)
    cumvol = np.empty(s.n)
    for d in np.unique(day):
        sl = day == d
        vwap[sl] = talib.VWAP(s.h[sl], s.low[sl], s.c[sl], s.v[sl])
        cumvol[sl] = np.cumsum(s.v[sl])
    vwap[cumvol == 0] = np.nan
    ref["vwap"] = vwap
    ref["trend"] = trend_rule(
        ref[f"ema_{cfg.trend_fast}"], ref[f"ema_{cfg.trend_slow}"], cfg.trend_tolerance
    )
    ref["vol_pct"], ref["vol_regime"] = regime_rule(ref["atr"], cfg)
    return ref


def trend_rule(fast: F64, slow: F64, tol: float) -> F64:
    """The documented trend rule, written independently of the kernel."""
    out = np.full(fast.size, np.nan)
    for i, (a, b) in enumerate(zip(fast, slow, strict=True)):
        if np.isnan(a) or np.isnan(b):
            continue
        out[i] = 0.0 if abs(a - b) <= tol * max(abs(a), abs(b)) else (1.0 if a > b else -1.0)
    return out


def regime_rule(atr: F64, cfg: IndicatorConfig) -> tuple[F64, F64]:
    """Percentile rank of each ATR among the last H ATR values (itself included)."""
    h = cfg.regime_history
    pct = np.full(atr.size, np.nan)
    first = int(np.argmax(~np.isnan(atr)))
    for i in range(first + h - 1, atr.size):
        win = atr[i - h + 1 : i + 1]
        pct[i] = 100.0 * ((win < atr[i]).sum() + 0.5 * (win == atr[i]).sum()) / h
    reg = np.where(pct < cfg.regime_low_pct, -1.0, np.where(pct > cfg.regime_high_pct, 1.0, 0.0))
    return pct, np.where(np.isnan(pct), np.nan, reg)


# ---------------------------------------------------------------------------- parity


@pytest.mark.parametrize("inst", range(len(SERIES)))
def test_talib_parity_interleaved(
    interleaved: tuple[IndicatorState, list[dict[str, F64]]], inst: int
) -> None:
    state, results = interleaved
    s = SERIES[inst]
    ref = talib_reference(s, state.config)
    ours = results[inst]
    assert set(ours) == set(ref) == set(state.output_names)
    for name in ours:
        if name in ("vol_pct", "vol_regime", "trend"):
            continue  # derived from float comparisons: checked below
        assert_series_close(name, ours[name], ref[name])
    # Trend/regime come from comparisons of values that agree with TA-Lib to ~1e-15;
    # a comparison may only flip where the compared values are that close.
    for name in ("trend", "vol_pct", "vol_regime"):
        np.testing.assert_array_equal(np.isnan(ours[name]), np.isnan(ref[name]), err_msg=name)
        differ = np.flatnonzero(~np.isnan(ref[name]) & (ours[name] != ref[name]))
        assert differ.size <= 3, f"{name}: {differ.size} mismatches at {differ[:10]}"


def test_first_values_match_declared_warmup(
    interleaved: tuple[IndicatorState, list[dict[str, F64]]],
) -> None:
    state, results = interleaved
    res = results[0]  # positive volume from bar 0
    for name, lookback in state.warmup.items():
        first = int(np.argmax(~np.isnan(res[name])))
        assert first == lookback, name
        assert np.isnan(res[name][:lookback]).all(), name
        assert not np.isnan(res[name][lookback:]).any(), name


def test_talib_lookbacks_agree_with_warmup() -> None:
    talib = pytest.importorskip("talib")
    st_ = IndicatorState()
    w = st_.warmup
    c = SERIES[0].c[:300]
    assert int(np.argmax(~np.isnan(talib.MACD(c, 12, 26, 9)[0]))) == w["macd"] == 33
    assert int(np.argmax(~np.isnan(talib.RSI(c, 14)))) == w["rsi"] == 14
    assert int(np.argmax(~np.isnan(talib.ATR(c, c, c, 14)))) == w["atr"] == 14
    assert int(np.argmax(~np.isnan(talib.BBANDS(c, 20, 2, 2, 0)[0]))) == w["bb_upper"] == 19
    assert w["vol_regime"] == 14 + 100 - 1
    assert w["trend"] == 20
    assert w["vwap"] == 0


def test_flat_and_one_sided_conventions(
    interleaved: tuple[IndicatorState, list[dict[str, F64]]],
) -> None:
    """Flat from the start → RSI 0 and σ 0; only gains → RSI 100; flat run → bands collapse."""
    _, results = interleaved
    r1 = results[1]
    assert (r1["rsi"][14:60] == 0.0).all()
    np.testing.assert_array_equal(r1["bb_upper"][19:60], r1["bb_middle"][19:60])
    assert (r1["atr"][14:60] == 0.0).all()
    assert (r1["rsi"][60:120] == 100.0).all()  # rising after a flat start: no loss ever
    r0 = results[0]
    np.testing.assert_array_equal(r0["bb_upper"][3020:3700], r0["bb_lower"][3020:3700])
    assert (r0["vol_regime"][3200:3700] == -1.0).all()  # ATR decays: lowest in its history
    assert (r0["trend"][3300:3700] == 0.0).all()  # both EMAs converge on the flat price
    r2 = results[2]  # no VWAP while a session has traded no volume (TA-Lib would say 0)
    assert np.isnan(r2["vwap"][:25]).all() and np.isnan(r2["vwap"][1860:1900]).all()
    assert not np.isnan(r2["vwap"][25:1860]).any() and not np.isnan(r2["vwap"][1900:]).any()


def test_vwap_without_sessions_matches_talib() -> None:
    talib = pytest.importorskip("talib")
    cfg = IndicatorConfig(vwap_session_ns=None)
    state = IndicatorState(cfg)
    slots = state.add_instruments(2)
    series = [SERIES[0], SERIES[3]]  # whole 12k-bar series: flat runs and gaps included
    res = drive(state, slots, series, seed=7)
    for s, r in zip(series, res, strict=True):
        ref = talib.VWAP(s.h, s.low, s.c, s.v)
        assert_series_close("vwap", r["vwap"], ref)


def test_vwap_session_offset() -> None:
    """Sessions can start at another hour (e.g. 22:00 UTC for FX)."""
    off = 22 * 3_600 * 1_000_000_000
    state = IndicatorState(IndicatorConfig(vwap_session_offset_ns=off))
    (i,) = state.add_instruments(1)
    day = 20_000 * NS_PER_DAY
    a = state.update([i], day + off - MINUTE, 1, 1, 1, 1.0, 10)["vwap"][0]
    b = state.update([i], day + off, 1, 3, 3, 3.0, 10)["vwap"][0]  # new session
    c = state.update([i], day + off + MINUTE, 1, 5, 5, 5.0, 10)["vwap"][0]
    assert (a, b, c) == (1.0, 3.0, 4.0)


def test_custom_periods_match_talib() -> None:
    talib = pytest.importorskip("talib")
    cfg = IndicatorConfig(
        sma_periods=(5, 200),
        ema_periods=(3, 100),
        rsi_period=7,
        macd_fast=5,
        macd_slow=35,
        macd_signal=5,
        bb_period=10,
        bb_k=1.5,
        atr_period=5,
        trend_fast=3,
        trend_slow=100,
        regime_history=20,
    )
    state = IndicatorState(cfg)
    slots = state.add_instruments(2)
    series = [_head(SERIES[1], 4000), _head(SERIES[2], 4000)]
    res = drive(state, slots, series, seed=3)
    for s, r in zip(series, res, strict=True):
        ref = talib_reference(s, cfg)
        for name in ref:
            if name not in ("trend", "vol_pct", "vol_regime"):
                assert_series_close(name, r[name], ref[name])
        assert int(np.argmax(~np.isnan(talib.MACD(s.c, 5, 35, 5)[0]))) == state.warmup["macd"]


# ---------------------------------------------------------------------------- batching


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), max_batch=st.integers(1, 4))
def test_results_do_not_depend_on_batch_composition(seed: int, max_batch: int) -> None:
    """The same bars give bit-identical values whatever else is in the same update call."""
    series = [make_series(10 + i, 300, 50.0 * (i + 1), flat=((100, 130),)) for i in range(4)]
    a = IndicatorState()
    ra = drive(a, a.add_instruments(4), series, seed=1)
    b = IndicatorState()
    rb = drive(b, b.add_instruments(4)[::-1].copy(), series, seed=seed, max_batch=max_batch)
    for x, y in zip(ra, rb, strict=True):
        for name in x:
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)


# ---------------------------------------------------------------------------- state


def _bar(s: Series, j: int) -> tuple[int, float, float, float, float, float]:
    return int(s.ts[j]), s.o[j], s.h[j], s.low[j], s.c[j], s.v[j]


@pytest.mark.parametrize("cut", [0, 10, 30, 150, 1000, 3200])
@pytest.mark.parametrize("codec", ["dict", "bytes"])
def test_state_round_trip_mid_series(cut: int, codec: str) -> None:
    """Serialize one instrument mid-series, restore into a fresh state, continue: identical."""
    s = SERIES[0]
    src = IndicatorState()
    src.add_instruments(3)  # the instrument lives in slot 1, between two others
    for j in range(cut):
        src.update(np.array([0, 1, 2]), *(np.full(3, x) for x in _bar(s, j)))
    if codec == "dict":
        blob = json.dumps(src.to_dict(1), allow_nan=False)
        dst = IndicatorState(capacity=1)
        dst.add_instruments(5)
        dst.from_dict(4, json.loads(blob))
    else:
        raw = src.to_bytes(1)
        dst = IndicatorState()
        dst.add_instruments(5)
        dst.from_bytes(4, raw)
    assert dst.bars_seen([4])[0] == cut
    for j in range(cut, cut + 400):
        a = src.update([1], *_bar(s, j))
        b = dst.update([4], *_bar(s, j))
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{name} at bar {j}")


def test_state_snapshot_rejects_other_config_and_garbage() -> None:
    a = IndicatorState()
    a.add_instruments(1)
    a.update([0], T0, 1, 1, 1, 1, 1)
    b = IndicatorState(IndicatorConfig(rsi_period=10))
    b.add_instruments(1)
    with pytest.raises(ValueError, match="different IndicatorConfig"):
        b.from_dict(0, a.to_dict(0))
    with pytest.raises(ValueError, match="different IndicatorConfig"):
        b.from_bytes(0, a.to_bytes(0))
    with pytest.raises(ValueError, match="not an indicator state"):
        a.from_bytes(0, b"nonsense")
    with pytest.raises(ValueError, match="truncated"):
        a.from_bytes(0, a.to_bytes(0)[:-8])
    c = IndicatorState(IndicatorConfig(sma_periods=(20, 100)))  # other layout, too
    c.add_instruments(1)
    with pytest.raises(ValueError, match="different IndicatorConfig"):
        c.from_bytes(0, a.to_bytes(0))
    with pytest.raises(ValueError, match="version"):
        a.from_dict(0, {**a.to_dict(0), "v": 99})
    with pytest.raises(IndexError):
        a.to_dict(1)


def test_growth_keeps_existing_state() -> None:
    s = SERIES[3]
    ref = IndicatorState()
    ref.add_instruments(1)
    grown = IndicatorState(capacity=1)
    grown.add_instruments(1)
    for j in range(300):
        if j % 50 == 49:
            new = grown.add_instruments(7)  # several reallocations
            assert new[0] == grown.n - 7
        a = ref.update([0], *_bar(s, j))
        b = grown.update([0], *_bar(s, j))
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    fresh = grown.update(np.arange(1, grown.n), T0, 1, 1, 1, 1, 1)
    assert np.isnan(fresh["rsi"]).all() and (fresh["vwap"] == 1.0).all()


def test_all_slots_in_place_path_equals_gather_path() -> None:
    """idx = every slot in order updates the arrays in place; other orders gather/scatter."""
    series = [make_series(20 + i, 300, 10.0 * (i + 1), flat=((50, 80),)) for i in range(4)]
    a, b = IndicatorState(), IndicatorState()
    a.add_instruments(4)
    b.add_instruments(4)
    order = np.array([3, 1, 0, 2])
    for j in range(300):
        bar = [
            np.array([getattr(s, f)[j] for s in series]) for f in ("ts", "o", "h", "low", "c", "v")
        ]
        peeked = a.peek(np.arange(4), *bar)  # all slots but not committing: no in-place
        out_a = a.update(np.arange(4), *bar)
        out_b = b.update(order, *(x[order] for x in bar))
        for name in out_a:
            np.testing.assert_array_equal(peeked[name], out_a[name])
            np.testing.assert_array_equal(out_a[name][order], out_b[name])
    for i in range(4):
        assert a.to_bytes(i) == b.to_bytes(i)


def test_peek_does_not_change_state() -> None:
    s = SERIES[0]
    a = IndicatorState()
    a.add_instruments(2)
    for j in range(200):
        a.update([0, 1], *(np.full(2, x) for x in _bar(s, j)))
    before = a.to_bytes(0)
    forming = a.peek([0], *_bar(s, 200))
    assert a.to_bytes(0) == before
    closed = a.update([0], *_bar(s, 200))
    for name in closed:
        np.testing.assert_array_equal(forming[name], closed[name])


def test_reset_restarts_warmup() -> None:
    s = SERIES[0]
    a = IndicatorState()
    a.add_instruments(2)
    for j in range(60):
        a.update([0, 1], *(np.full(2, x) for x in _bar(s, j)))
    a.reset([1])
    assert list(a.bars_seen([0, 1])) == [60, 0]
    b = IndicatorState()
    b.add_instruments(1)
    for j in range(60, 200):
        x = a.update([1], *_bar(s, j))
        y = b.update([0], *_bar(s, j))
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])


def test_input_validation() -> None:
    a = IndicatorState()
    a.add_instruments(2)
    with pytest.raises(ValueError, match="finite"):
        a.update([0], T0, 1, 1, 1, np.nan, 1)
    with pytest.raises(ValueError, match="volume"):
        a.update([0], T0, 1, 1, 1, 1, -1)
    with pytest.raises(ValueError, match="distinct"):
        a.update([0, 0], T0, 1, 1, 1, 1, 1)
    with pytest.raises(IndexError):
        a.update([2], T0, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="shape"):
        a.update([0, 1], T0, [1, 1], [1, 1], [1, 1], [1, 1, 1], [1, 1])
    with pytest.raises(ValueError, match="ts"):
        a.update([0], None, 1, 1, 1, 1, 1)
    assert list(a.bars_seen([0, 1])) == [0, 0]  # nothing was folded in
    with pytest.raises(ValueError):
        IndicatorConfig(macd_fast=26, macd_slow=12)
    with pytest.raises(ValueError):
        IndicatorConfig(sma_periods=(1,))
    out = a.update(np.array([], dtype=np.intp), T0, [], [], [], [], [])
    assert all(v.shape == (0,) for v in out.values())


# ---------------------------------------------------------------------------- trend


def _feed(state: IndicatorState, closes: F64, spread: F64 | float = 0.0) -> dict[str, F64]:
    """One instrument, bars with the given closes and high/low = close ± spread."""
    (i,) = state.add_instruments(1)
    sp = np.broadcast_to(np.asarray(spread, dtype=np.float64), closes.shape)
    res = {k: np.full(closes.size, np.nan) for k in state.output_names}
    for j, c in enumerate(closes):
        out = state.update([i], T0 + j * MINUTE, c, c + sp[j], c - sp[j], c, 1.0)
        for k, series in res.items():
            series[j] = out[k][0]
    return res


def test_trend_up_down_flat() -> None:
    n = 80
    up = _feed(IndicatorState(), 100 + np.arange(n, dtype=np.float64))
    down = _feed(IndicatorState(), 200 - np.arange(n, dtype=np.float64))
    flat = _feed(IndicatorState(), np.full(n, 42.5))
    for r in (up, down, flat):
        assert np.isnan(r["trend"][:20]).all()
    assert (up["trend"][20:] == 1.0).all()
    assert (down["trend"][20:] == -1.0).all()
    assert (flat["trend"][20:] == 0.0).all()


def test_trend_tolerance_band() -> None:
    """A drift smaller than the relative band is 'flat'; a tighter band sees it."""
    closes = 100 * (1 + 1e-7 * np.arange(120, dtype=np.float64))
    wide = _feed(IndicatorState(IndicatorConfig(trend_tolerance=1e-4)), closes)
    tight = _feed(IndicatorState(IndicatorConfig(trend_tolerance=1e-9)), closes)
    assert (wide["trend"][20:] == 0.0).all()
    assert (tight["trend"][40:] == 1.0).all()


# ---------------------------------------------------------------------------- regime


def test_volatility_regime_levels() -> None:
    """Constant TR → all ATRs tie (50th pct, normal); a spike → high; calm → low."""
    calm, spike, quiet = 200, 30, 200
    spread = np.concatenate([np.full(calm, 0.5), np.full(spike, 2.5), np.full(quiet, 0.05)])
    closes = np.full(spread.size, 100.0)
    r = _feed(IndicatorState(), closes, spread)
    first = 14 + 100 - 1
    assert np.isnan(r["vol_pct"][:first]).all() and np.isnan(r["vol_regime"][:first]).all()
    assert (r["atr"][14:calm] == 1.0).all()  # TR = 2·0.5 exactly, Wilder keeps it exact
    assert (r["vol_pct"][first:calm] == 50.0).all()
    assert (r["vol_regime"][first:calm] == 0.0).all()
    assert r["vol_pct"][calm] == 99.5  # above all 99 earlier values, ties only itself
    assert (r["vol_regime"][calm : calm + spike] == 1.0).all()
    end = calm + spike
    assert (r["vol_regime"][end + 25 : end + quiet] == -1.0).all()  # below every calm ATR


def test_volatility_regime_custom_thresholds() -> None:
    spread = np.concatenate([np.full(150, 0.5), np.full(5, 0.6)])
    r = _feed(IndicatorState(IndicatorConfig(regime_high_pct=99.6)), np.full(155, 10.0), spread)
    assert r["vol_pct"][150] == 99.5 and r["vol_regime"][150] == 0.0


# ---------------------------------------------------------------------------- update_series


def _per_bar(s: Series, n: int) -> tuple[IndicatorState, dict[str, F64]]:
    """Reference: bars folded one update() call at a time into slot 0."""
    state = IndicatorState()
    state.add_instruments(1)
    res = {k: np.full(n, np.nan) for k in state.output_names}
    for j in range(n):
        out = state.update([0], *_bar(s, j))
        for k, vals in res.items():
            vals[j] = out[k][0]
    return state, res


@pytest.fixture(scope="module")
def per_bar_reference() -> tuple[IndicatorState, dict[str, F64]]:
    return _per_bar(SERIES[0], 4000)


@settings(max_examples=12, deadline=None)
@given(cuts=st.lists(st.integers(1, 3999), max_size=12, unique=True), mix=st.integers(0, 2**16))
def test_update_series_bit_identical_to_per_bar(
    per_bar_reference: tuple[IndicatorState, dict[str, F64]], cuts: list[int], mix: int
) -> None:
    """Any chunking of a series into update_series/update calls gives the same bits."""
    ref_state, ref = per_bar_reference
    s = SERIES[0]
    state = IndicatorState()
    state.add_instruments(3)  # the instrument sits in slot 2
    got = {k: np.full(4000, np.nan) for k in state.output_names}
    bounds = [0, *sorted(cuts), 4000]
    for n_chunk, (a, b) in enumerate(itertools.pairwise(bounds)):
        if (mix >> (n_chunk % 16)) & 1 and b - a == 1:
            out = state.update([2], *_bar(s, a))  # single bars go through update()
        else:
            out = state.update_series(
                2, s.ts[a:b], s.o[a:b], s.h[a:b], s.low[a:b], s.c[a:b], s.v[a:b]
            )
        for k, vals in got.items():
            assert out[k].shape == (b - a,)
            vals[a:b] = out[k]
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert state.to_bytes(2) == ref_state.to_bytes(0)


def test_update_series_parity_with_talib_on_gappy_series() -> None:
    """The whole 12k-bar series with its 2,000-bar flat run and gap in one call."""
    s = SERIES[3]
    state = IndicatorState()
    state.add_instruments(1)
    out = state.update_series(0, s.ts, s.o, s.h, s.low, s.c, s.v)
    ref = talib_reference(s, state.config)
    for name in ref:
        if name in ("trend", "vol_pct", "vol_regime"):
            np.testing.assert_array_equal(out[name], ref[name], err_msg=name)
        else:
            assert_series_close(name, out[name], ref[name])


def test_update_series_edge_cases() -> None:
    state = IndicatorState()
    state.add_instruments(2)
    empty = state.update_series(0, [], [], [], [], [], [])
    assert set(empty) == set(state.output_names)
    assert all(v.shape == (0,) for v in empty.values())
    assert list(state.bars_seen([0, 1])) == [0, 0]
    with pytest.raises(ValueError, match="finite"):
        state.update_series(0, [T0, T0], [1, 1], [1, 1], [1, 1], [1, np.inf], [1, 1])
    with pytest.raises(IndexError):
        state.update_series(2, [T0], [1], [1], [1], [1], [1])
    assert list(state.bars_seen([0, 1])) == [0, 0]
    # a single bar and a scalar session stamp work too
    one = state.update_series(1, T0, [1.0], [2.0], [0.5], [1.5], [3.0])
    assert one["vwap"][0] == (2.0 + 0.5 + 1.5) / 3.0
