"""The synthetic market: deterministic, exact counts, sane ranges and a realistic texture."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import pytest

from schemas.batch import COLUMNS
from schemas.events import NS_PER_S, Kind
from streams.sources import synthetic
from streams.sources.synthetic import (
    DEFAULT_INSTRUMENTS,
    HOUR_NS,
    Instrument,
    default_window,
    generate,
    produce,
    window_ns,
)

START = 1_704_067_200 * NS_PER_S  # 2024-01-01T00:00:00Z


def _by_symbol(data: list[tuple[Instrument, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {f"{inst.venue}:{inst.symbol}": cols for inst, cols in data}


def test_default_instruments() -> None:
    keys = {(i.venue, i.symbol) for i in DEFAULT_INSTRUMENTS}
    assert {
        ("sim_binance", "BTC-USDT"),
        ("sim_binance", "ETH-USDT"),
        ("sim_binance", "SOL-USDT"),
        ("sim_coinbase", "BTC-USD"),
        ("sim_coinbase", "ETH-USD"),
        ("sim_kraken", "BTC-EUR"),
        ("sim_kraken", "XRP-EUR"),
    } == keys
    assert all(i.venue.startswith("sim_") for i in DEFAULT_INSTRUMENTS)
    prices = {i.symbol: i.price for i in DEFAULT_INSTRUMENTS}
    assert (prices["BTC-USDT"], prices["ETH-USDT"], prices["SOL-USDT"]) == (65_000, 3_200, 150)
    assert prices["XRP-EUR"] == pytest.approx(0.55)


def test_same_seed_and_start_are_byte_identical() -> None:
    a = generate(7, 20_000, start_ns=START)
    b = generate(7, 20_000, start_ns=START)
    for (ia, ca), (ib, cb) in zip(a, b, strict=True):
        assert ia == ib
        assert ca.keys() == cb.keys()
        for name in ca:
            assert ca[name].tobytes() == cb[name].tobytes(), name


def test_other_seed_differs_and_start_only_shifts_time() -> None:
    base = _by_symbol(generate(7, 5_000, start_ns=START))
    other = _by_symbol(generate(8, 5_000, start_ns=START))
    later = _by_symbol(generate(7, 5_000, start_ns=START + HOUR_NS))
    for key, cols in base.items():
        assert not np.array_equal(cols["price"], other[key]["price"])
        np.testing.assert_array_equal(later[key]["ts_event"] - cols["ts_event"], HOUR_NS)
        np.testing.assert_array_equal(later[key]["price"], cols["price"])
        np.testing.assert_array_equal(later[key]["size"], cols["size"])
        # ids move on with the window, so a later run never repeats an earlier run's ids
        assert later[key]["trade_id"][0] > cols["trade_id"][-1]


@pytest.mark.parametrize("events", [0, 1, 6, 7, 1_000, 12_345])
def test_exact_event_count(events: int) -> None:
    data = generate(1, events, start_ns=START)
    assert len(data) == len(DEFAULT_INSTRUMENTS)
    assert sum(len(cols["ts_event"]) for _, cols in data) == events
    for _, cols in data:
        assert set(cols) == set(COLUMNS[Kind.TRADE])
        assert len({len(c) for c in cols.values()}) == 1
        for name, spec in COLUMNS[Kind.TRADE].items():
            assert cols[name].dtype == spec.dtype, name


def test_split_follows_weights() -> None:
    events = 100_000
    data = generate(2, events, start_ns=START)
    total_weight = sum(i.weight for i in DEFAULT_INSTRUMENTS)
    for inst, cols in data:
        assert abs(len(cols["ts_event"]) - events * inst.weight / total_weight) <= 1


def test_columns_are_sane() -> None:
    events, rate = 50_000, 100.0
    data = generate(3, events, start_ns=START, rate_per_s=rate)
    end = START + window_ns(events, rate)
    for inst, c in data:
        ts = c["ts_event"]
        assert np.all(np.diff(ts) >= 0)
        assert ts[0] >= START and ts[-1] < end
        latency = c["ts_recv"] - ts
        assert latency.min() > 0 and latency.max() < NS_PER_S
        assert np.median(latency) == pytest.approx(inst.latency_ms * 1e6, rel=0.2)
        assert np.all(c["price"] > 0) and np.all(np.isfinite(c["price"]))
        assert np.all(c["size"] > 0) and np.all(np.isfinite(c["size"]))
        assert set(np.unique(c["side"]).tolist()) == {-1, 1}
        assert 0.4 < np.mean(c["side"] == 1) < 0.6
        ids = c["trade_id"]
        assert ids[0] > 0 and np.all(np.diff(ids) == 1)
        if inst.sequenced:
            assert c["seq"][0] > 0 and np.all(np.diff(c["seq"]) == 1)
        else:
            assert np.all(c["seq"] == -1)
        # prices on the tick grid, sizes on the lot grid
        ticks = c["price"] / inst.tick_size
        np.testing.assert_allclose(ticks, np.round(ticks), rtol=0, atol=1e-6)
        lots = c["size"] / inst.lot_size
        np.testing.assert_allclose(lots, np.round(lots), rtol=1e-9, atol=1e-6)
        # a GBM mid over ~8 simulated minutes stays within a few percent of the start
        assert np.all(np.abs(c["price"] / inst.price - 1) < 0.05)


def test_spread_is_respected() -> None:
    """With a constant mid, buys print at the ask and sells at the bid of the quoted spread."""
    inst = Instrument(
        "sim_test", "ABC-USD", 100.0, 0.0, 10.0, 1.0, tick_size=0.01, jumps_per_day=0.0
    )
    ((_, c),) = generate(5, 2_000, start_ns=START, instruments=[inst])
    ask = math.ceil(100.0 * (1 + 5e-4) / 0.01) * 0.01
    bid = math.floor(100.0 * (1 - 5e-4) / 0.01) * 0.01
    buys, sells = c["price"][c["side"] == 1], c["price"][c["side"] == -1]
    assert len(buys) and len(sells)
    np.testing.assert_allclose(buys, ask, rtol=0, atol=1e-9)
    np.testing.assert_allclose(sells, bid, rtol=0, atol=1e-9)
    assert ask - bid >= 100.0 * 10 / 1e4 - 1e-9


def test_buys_print_above_nearby_sells() -> None:
    data = generate(4, 100_000, start_ns=START)
    for inst, c in data:
        side, price, ts = c["side"], c["price"], c["ts_event"]
        flip = (side[1:] != side[:-1]) & (np.diff(ts) < 50_000_000)  # within 50 ms
        buy = np.where(side[1:] == 1, price[1:], price[:-1])[flip]
        sell = np.where(side[1:] == 1, price[:-1], price[1:])[flip]
        assert flip.sum() > 100
        assert np.mean(buy > sell) > 0.8, inst.symbol
        # the typical buy/sell gap is the quoted spread
        gap_bps = np.median((buy - sell) / sell) * 1e4
        assert gap_bps == pytest.approx(inst.spread_bps, rel=0.5, abs=0.5), inst.symbol


def test_arrivals_are_bursty() -> None:
    """An MMPP has over-dispersed inter-arrival times; a Poisson process has CV = 1."""
    events, rate = 200_000, 100.0
    data = generate(6, events, start_ns=START, rate_per_s=rate)
    for inst, c in data:
        gaps = np.diff(c["ts_event"]).astype(np.float64)
        assert gaps.std() / gaps.mean() > 1.3, inst.symbol
    # and per-second counts of the whole market vary far more than a Poisson's would
    ts = np.concatenate([c["ts_event"] for _, c in data])
    counts = np.bincount((ts - START) // NS_PER_S)
    assert counts.var() / counts.mean() > 5


def test_volatility_is_about_annual_vol() -> None:
    events, rate = 100_000, 1.0  # ~28 simulated hours
    inst = DEFAULT_INSTRUMENTS[0]
    ((_, c),) = generate(9, events, start_ns=START, rate_per_s=rate, instruments=[inst])
    ts, price = c["ts_event"], c["price"]
    step = 300 * NS_PER_S
    grid = np.arange(ts[0] + step, ts[-1], step)
    last = price[np.searchsorted(ts, grid, side="right") - 1]
    returns = np.diff(np.log(last))
    annual = returns.std() * math.sqrt(365.25 * 86_400 / 300)
    assert 0.4 < annual < 0.9
    kurtosis = np.mean((returns - returns.mean()) ** 4) / returns.var() ** 2
    assert kurtosis > 3  # fat tails: bursts and jumps


def test_window_and_default_window() -> None:
    assert window_ns(10_000_000, 100.0) == 100_000 * NS_PER_S
    assert window_ns(3, 7.0) == 428_571_428
    now = START + 5 * HOUR_NS + 1_234_567_890
    start = default_window(36_000, 100.0, now)
    end = start + window_ns(36_000, 100.0)
    assert end % HOUR_NS == 0 and end <= now and end > now - HOUR_NS
    assert end - start == 360 * NS_PER_S
    assert default_window(36_000, 100.0, now + 60 * NS_PER_S) == start  # same hour, same data
    assert default_window(36_000, 100.0, START) == START - 360 * NS_PER_S  # exactly on the hour
    real_now = time.time_ns()
    real_start = default_window(1_000, 50.0, real_now)
    data = generate(1, 1_000, start_ns=real_start, rate_per_s=50.0)
    last = max(int(c["ts_event"][-1]) for _, c in data if len(c["ts_event"]))
    assert last < real_start + window_ns(1_000, 50.0) <= real_now


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="events"):
        generate(1, -1, start_ns=START)
    with pytest.raises(ValueError, match="rate_per_s"):
        generate(1, 10, start_ns=START, rate_per_s=0)
    with pytest.raises(ValueError, match="start_ns"):
        generate(1, 10, start_ns=-5)
    with pytest.raises(ValueError, match="unique"):
        generate(1, 10, start_ns=START, instruments=[DEFAULT_INSTRUMENTS[0]] * 2)
    with pytest.raises(ValueError, match="no instruments"):
        generate(1, 10, start_ns=START, instruments=[])
    with pytest.raises(ValueError, match="venue"):
        Instrument("Binance", "BTC-USDT", 1.0, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="symbol"):
        Instrument("sim_x", "BTCUSDT", 1.0, 0.5, 1.0, 1.0)
    with pytest.raises(ValueError, match="price"):
        Instrument("sim_x", "BTC-USDT", 0.0, 0.5, 1.0, 1.0)


class FakeProducer:
    """Records what a source hands over (the Kafka path is tested elsewhere)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Kind, str, str, dict[str, Any]]] = []

    async def add(
        self,
        kind: Kind,
        venue: str,
        symbol: str,
        columns: dict[str, Any],
        *,
        timeframe: str | None = None,
        reason: str | None = None,
    ) -> None:
        assert timeframe is None and reason is None
        self.calls.append((kind, venue, symbol, columns))


async def test_produce_hands_over_everything_in_time_order() -> None:
    events, rate = 30_000, 100.0
    producer = FakeProducer()
    sent = await produce(producer, 11, events, start_ns=START, rate_per_s=rate)
    assert sent == events
    assert {c[0] for c in producer.calls} == {Kind.TRADE}
    expected = _by_symbol(generate(11, events, start_ns=START, rate_per_s=rate))
    for key, cols in expected.items():
        parts = [c[3] for c in producer.calls if f"{c[1]}:{c[2]}" == key]
        for name in cols:
            got = np.concatenate([p[name] for p in parts])
            assert got.tobytes() == cols[name].tobytes(), (key, name)
    # simulated-time order across instruments, up to one slice
    slice_ns = synthetic._SLICE_EVENTS / rate * NS_PER_S
    high = START
    for _, _, _, cols in producer.calls:
        ts = cols["ts_event"]
        assert ts[0] > high - slice_ns
        high = max(high, int(ts[-1]))
    assert len(producer.calls) > 7  # sliced, not one call per instrument


async def test_produce_nothing() -> None:
    producer = FakeProducer()
    assert await produce(producer, 1, 0, start_ns=START) == 0
    assert producer.calls == []


async def test_produce_paces_wall_clock() -> None:
    producer = FakeProducer()
    began = time.monotonic()
    sent = await produce(producer, 1, 400, start_ns=START, pace=1_000.0)
    elapsed = time.monotonic() - began
    assert sent == 400
    assert 0.3 <= elapsed < 5.0  # 400 events at 1000/s: ~0.4 s
    with pytest.raises(ValueError, match="pace"):
        await produce(producer, 1, 10, start_ns=START, pace=-1.0)


async def test_produce_holds_without_bursting_afterwards() -> None:
    """A hold stops the feed; the time held is not made up for by bursting afterwards."""
    producer = FakeProducer()
    seen: list[int] = []
    release = asyncio.Event()

    async def hold(sent: int) -> None:
        seen.append(sent)
        if sent >= 200:
            await release.wait()

    feeding = asyncio.create_task(
        produce(producer, 1, 400, start_ns=START, pace=1_000.0, hold=hold)
    )
    await asyncio.sleep(0.6)  # ~0.2 s to reach the hold, then held
    held_at = sum(len(c[3]["ts_event"]) for c in producer.calls)
    assert 200 <= held_at < 400 and not feeding.done()
    released = time.monotonic()
    release.set()
    assert await feeding == 400
    assert time.monotonic() - released >= 0.12  # the rest at ~1000/s, not in one burst
    assert seen == sorted(seen) and seen[0] == 0
