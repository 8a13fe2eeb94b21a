"""Validation rules: each bad input gets its reason code, good ones pass, duplicates caught."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from agents.validate import Validator, source_id
from schemas.batch import MarketEventBatch, decode_batch
from schemas.events import Kind
from streams.settings import Settings

NOW = time.time_ns()


def _trade(**over: object) -> MarketEventBatch:
    cols = {
        "ts_event": [NOW - 10**9],
        "ts_recv": [NOW],
        "price": [100.0],
        "size": [1.0],
        "side": [1],
        "trade_id": [1],
    }
    cols.update({k: [v] for k, v in over.items()})
    doc = {"v": 1, "kind": "trade", "venue": "binance", "symbol": "BTC-USDT", "n": 1, "cols": cols}
    return decode_batch(orjson.dumps(doc))


def _trades(
    ids: list[int], prices: list[float] | None = None, sizes: list[float] | None = None
) -> MarketEventBatch:
    """BTC-USDT trades with these ids, built in process (values JSON cannot carry too)."""
    n = len(ids)
    return MarketEventBatch.from_columns(
        Kind.TRADE,
        "binance",
        "BTC-USDT",
        {
            "ts_event": np.full(n, NOW - 10**9),
            "ts_recv": np.full(n, NOW),
            "price": np.array(prices or [1.0] * n),
            "size": np.array(sizes or [1.0] * n),
            "trade_id": np.array(ids),
        },
    )


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({}, None),
        ({"price": float("nan")}, "wrong_type"),  # JSON has no NaN: orjson writes null
        ({"price": -1.0}, "non_positive_price"),
        ({"price": 0.0}, "non_positive_price"),
        ({"price": "100"}, "wrong_type"),
        ({"size": -0.5}, "negative_size"),
        ({"size": 0.0}, None),
        ({"side": 3}, "bad_side"),
        ({"trade_id": None}, "missing_trade_id"),
        ({"ts_event": NOW + 3600 * 10**9}, "future_timestamp"),
        ({"ts_event": 0}, "bad_timestamp"),
        ({"ts_event": 1.5}, "wrong_type"),
    ],
)
def test_trade_rules(over: dict[str, object], reason: str | None) -> None:
    assert Validator(Settings()).event_reasons(_trade(**over), NOW) == [reason]


def test_non_finite_values_built_in_process_are_caught() -> None:
    b = _trades([1, 2, 3], prices=[np.inf, 1.0, 1.0], sizes=[1.0, np.nan, 1.0])
    assert Validator(Settings()).event_reasons(b, NOW) == [
        "non_finite_price",
        "non_finite_size",
        None,
    ]


def test_age_rule_only_when_configured() -> None:
    old = _trade(ts_event=NOW - 10 * 86400 * 10**9)
    assert Validator(Settings()).event_reasons(old, NOW) == [None]
    assert Validator(Settings(max_age_s=86400)).event_reasons(old, NOW) == ["stale_timestamp"]


def test_duplicates_within_and_across_records_and_window() -> None:
    v = Validator(Settings(dedup_window=2))
    b = _trades([5, 6, 5], prices=[1.0, -1.0, 1.0])
    assert v.event_reasons(b, NOW) == [None, "non_positive_price", "duplicate_trade_id"]
    # the rejected id 6 was not remembered, so a valid 6 later is accepted
    again = _trade(trade_id=6)
    assert v.event_reasons(again, NOW) == [None]
    assert v.event_reasons(_trade(trade_id=6), NOW) == ["duplicate_trade_id"]
    # window of 2: ids 5 and 6 remembered; adding 7 forgets 5
    v.event_reasons(_trade(trade_id=7), NOW)
    assert v.event_reasons(_trade(trade_id=5), NOW) == [None]


def test_record_level_reasons() -> None:
    v = Validator(Settings(symbols=("ETH-USDT",)))
    b = _trade()
    assert v.record_reason(b) == ("unknown_symbol", "BTC-USDT")
    b.symbol = "btcusdt"
    assert v.record_reason(b)[0] == "bad_symbol"  # type: ignore[index]
    b.venue = "nasdaq"
    assert v.record_reason(b)[0] == "unknown_venue"  # type: ignore[index]


def test_quote_and_bar_rules() -> None:
    v = Validator(Settings())
    q = MarketEventBatch.from_columns(
        Kind.QUOTE,
        "oanda",
        "EUR-USD",
        {
            "ts_event": [NOW] * 2,
            "ts_recv": [NOW] * 2,
            "bid_price": [1.1, 1.2],
            "bid_size": [1.0, 1.0],
            "ask_price": [1.2, 1.1],
            "ask_size": [1.0, 1.0],
        },
    )
    assert v.event_reasons(q, NOW) == [None, "crossed_quote"]
    bars = MarketEventBatch.from_columns(
        Kind.BAR,
        "file",
        "BTC-USDT",
        {
            "ts_event": [NOW] * 3,
            "ts_recv": [NOW] * 3,
            "open": [10.0, 10.0, 10.0],
            "high": [12.0, 9.0, 12.0],
            "low": [9.0, 8.0, 9.0],
            "close": [11.0, 8.5, 11.0],
            "volume": [1.0, 1.0, -1.0],
        },
        timeframe="1m",
    )
    assert v.event_reasons(bars, NOW) == [None, "bad_bar", "negative_size"]
    bars.timeframe = "7m"
    assert v.record_reason(bars) == ("unknown_timeframe", "7m")


def test_duplicates_are_per_instrument_and_out_of_order_ids_pass() -> None:
    v = Validator(Settings(dedup_window=64))
    eth = _trade(trade_id=5)
    eth.symbol = "ETH-USDT"
    assert v.event_reasons(_trade(trade_id=5), NOW) == [None]
    assert v.event_reasons(eth, NOW) == [None]  # same id, another instrument
    b = _trades([9, 3, 5, 4])  # below the largest seen (9): looked up, not assumed
    assert v.event_reasons(b, NOW) == [None, None, "duplicate_trade_id", None]


# Redelivery is not duplication: a trades record read twice (a rebalance, or the commit
# watchdog re-reading a partition after the broker stalled) must get the same answers both
# times, or its events would be dead-lettered as duplicates of themselves and never
# forwarded (found by the broker-pause fault test).


def test_a_record_read_again_gets_the_same_answers() -> None:
    v = Validator(Settings())
    first = _trades([1, 2, 2, 3], prices=[10.0, 10.0, 10.0, -1.0])
    want = [None, None, "duplicate_trade_id", "non_positive_price"]
    assert v.event_reasons(first, NOW, source_id(0, 41)) == want
    assert v.event_reasons(first, NOW, source_id(0, 41)) == want  # redelivered


def test_the_same_ids_in_another_record_are_duplicates() -> None:
    v = Validator(Settings())
    assert v.event_reasons(_trades([1, 2]), NOW, source_id(0, 41)) == [None, None]
    later = _trades([2, 3])
    assert v.event_reasons(later, NOW, source_id(0, 42)) == ["duplicate_trade_id", None]
    assert v.event_reasons(later, NOW, source_id(0, 42)) == ["duplicate_trade_id", None]
    # same offset, another partition: another record
    assert v.event_reasons(_trades([1]), NOW, source_id(1, 41)) == ["duplicate_trade_id"]
