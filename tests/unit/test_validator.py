"""Validation rules: each bad input gets its reason code, good ones pass, duplicates caught."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import pytest

from kernels.validation import ValidationRules, Validator, source_id
from schemas.batch import MarketEventBatch, decode_batch
from schemas.events import GAP_REASONS, Kind
from streams.settings import Settings

NOW = time.time_ns()
SEC = 10**9
INT64_MAX = 2**63 - 1


def _validator(**settings: Any) -> Validator:
    return Validator(ValidationRules.from_settings(Settings(**settings)))


def _decoded(kind: str, cols: dict[str, Any], **extra: Any) -> MarketEventBatch:
    """One event of `kind` through the wire format (so JSON types are what they are)."""
    doc = {"v": 1, "kind": kind, "venue": "binance", "symbol": "BTC-USDT", "n": 1, **extra}
    doc["cols"] = {k: [v] for k, v in cols.items()}
    return decode_batch(orjson.dumps(doc))


def _trade(**over: object) -> MarketEventBatch:
    cols = {
        "ts_event": NOW - SEC,
        "ts_recv": NOW,
        "price": 100.0,
        "size": 1.0,
        "side": 1,
        "trade_id": 1,
    }
    return _decoded("trade", {**cols, **over})


def _quote(**over: object) -> MarketEventBatch:
    cols = {
        "ts_event": NOW - SEC,
        "ts_recv": NOW,
        "bid_price": 99.0,
        "bid_size": 1.0,
        "ask_price": 101.0,
        "ask_size": 2.0,
    }
    return _decoded("quote", {**cols, **over})


def _bar(**over: object) -> MarketEventBatch:
    cols = {
        "ts_event": NOW - 120 * SEC,
        "ts_recv": NOW,
        "open": 10.0,
        "high": 12.0,
        "low": 9.0,
        "close": 11.0,
        "volume": 5.0,
        "trades": 3,
        "vwap": 10.5,
        "flags": 0,
    }
    return _decoded("bar", {**cols, **over}, tf="1m")


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
            "ts_event": np.full(n, NOW - SEC),
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
        ({"price": -0.0}, "non_positive_price"),
        ({"price": "100"}, "wrong_type"),
        ({"price": True}, "wrong_type"),
        ({"price": [100.0]}, "wrong_type"),  # a one-element nested list is not a price
        ({"price": [[100.0]]}, "wrong_type"),
        ({"price": {"v": 100.0}}, "wrong_type"),
        ({"price": 100}, None),  # an integral price written as an int is a number
        ({"price": 1e308}, "price_out_of_range"),
        ({"price": 1e-320}, "price_out_of_range"),  # positive, but a denormal
        ({"price": 2**63}, "price_out_of_range"),  # a number, far beyond max_price
        ({"price": 1e9}, None),
        ({"size": -0.5}, "negative_size"),
        ({"size": -0.0}, "negative_size"),
        ({"size": 0.0}, None),
        ({"size": 1e-320}, "size_out_of_range"),
        ({"size": 1e16}, "size_out_of_range"),
        ({"size": None}, "wrong_type"),
        ({"side": 3}, "bad_side"),
        ({"side": -(2**63)}, "bad_side"),
        ({"side": None}, None),  # optional: unknown side
        ({"side": 1.0}, "wrong_type"),
        ({"trade_id": None}, "missing_trade_id"),
        ({"trade_id": -5}, "missing_trade_id"),
        ({"trade_id": 2**62 + 1}, "id_out_of_range"),
        ({"trade_id": INT64_MAX}, "id_out_of_range"),
        ({"trade_id": 2**63}, "wrong_type"),  # int64 max + 1
        ({"trade_id": True}, "wrong_type"),
        ({"seq": -2}, "id_out_of_range"),
        ({"seq": INT64_MAX}, "id_out_of_range"),
        ({"seq": 7}, None),
        ({"ts_event": NOW + 3600 * SEC}, "future_timestamp"),
        ({"ts_event": INT64_MAX}, "future_timestamp"),
        ({"ts_event": 0}, "bad_timestamp"),
        ({"ts_event": -(2**63)}, "bad_timestamp"),
        ({"ts_event": 1.5}, "wrong_type"),
        ({"ts_event": 1_700_000_000}, "implausible_timestamp"),  # seconds written as ns
        ({"ts_recv": 1_700_000_000_000}, "implausible_timestamp"),  # ms written as ns
        ({"ts_recv": NOW + 3600 * SEC}, "future_timestamp"),
        ({"ts_recv": NOW - 600 * SEC}, "recv_before_event"),  # 10 min before the trade
        ({"ts_recv": NOW - 30 * SEC}, None),  # clocks 29 s apart: tolerated
    ],
)
def test_trade_rules(over: dict[str, object], reason: str | None) -> None:
    assert _validator().event_reasons(_trade(**over), NOW) == [reason]


def test_non_finite_values_built_in_process_are_caught() -> None:
    b = _trades([1, 2, 3, 4], prices=[np.inf, 1.0, -np.inf, 1.0], sizes=[1.0, np.nan, 1, -np.nan])
    assert _validator().event_reasons(b, NOW) == [
        "non_finite_price",
        "non_finite_size",
        "non_finite_price",
        "non_finite_size",
    ]


def test_age_rule_only_when_configured() -> None:
    old = _trade(ts_event=NOW - 10 * 86400 * SEC, ts_recv=NOW - 10 * 86400 * SEC)
    assert _validator().event_reasons(old, NOW) == [None]
    assert _validator(max_age_s=86400).event_reasons(old, NOW) == ["stale_timestamp"]


def test_bounds_are_settings() -> None:
    cheap = _trade(price=5e9, size=2.0)
    assert _validator().event_reasons(cheap, NOW) == ["price_out_of_range"]
    assert _validator(max_price=1e10).event_reasons(cheap, NOW) == [None]
    assert _validator(max_price=1e10, max_size=1.0).event_reasons(cheap, NOW) == [
        "size_out_of_range"
    ]
    late = _trade(ts_recv=NOW - 90 * SEC)
    assert _validator().event_reasons(late, NOW) == ["recv_before_event"]
    assert _validator(max_recv_before_event_ms=120_000).event_reasons(late, NOW) == [None]


@pytest.mark.parametrize(
    "settings",
    [
        {"max_price": 1e31},  # beyond MAX_BOUND: not finite in float32
        {"max_size": float("inf")},
        {"max_volume": float("nan")},
        {"min_price": 0.0},
        {"min_price": 10.0, "max_price": 1.0},
        {"min_size": 1e-31},
        {"max_quote_spread": 0.5},
        {"max_bar_range": float("inf")},
        {"max_event_id": 2**63},
        {"max_future_skew_ms": -1},
        {"dedup_window": 0},
    ],
)
def test_rules_refuse_bounds_that_break_the_guarantees(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ValidationRules.from_settings(Settings(**settings))


def test_duplicates_within_and_across_records_and_window() -> None:
    v = _validator(dedup_window=2)
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
    v = _validator(symbols=("ETH-USDT",))
    b = _trade()
    key = b"binance:BTC-USDT"
    assert v.record_reason(b, key) == ("unknown_symbol", "BTC-USDT")
    b.symbol = "btcusdt"
    assert v.record_reason(b, key) == ("bad_symbol", "btcusdt")
    b.venue = "nasdaq"
    assert v.record_reason(b, key) == ("unknown_venue", "nasdaq")
    assert _validator().record_reason(_trade(), key) is None


@pytest.mark.parametrize(
    ("venue", "symbol", "reason"),
    [
        ("binance", "BTC-USDT\n", "bad_symbol"),  # `$` matched before a trailing newline
        ("binance", "BTC-USDT\r", "bad_symbol"),
        ("binance", "BTC-USDT\x00", "bad_symbol"),
        ("binance", "\tBTC-USDT", "bad_symbol"),
        ("binance", "BTC-USD\u2028", "bad_symbol"),
        ("binance", "BTC-\uff35SDT", "bad_symbol"),  # a full-width letter
        ("binance", "BTC-USDT-X", "bad_symbol"),
        ("binance", "A" * 17 + "-USDT", "bad_symbol"),
        ("binance", "A" * 16 + "-" + "B" * 16, None),  # the longest symbol
        ("binance\n", "BTC-USDT", "unknown_venue"),
        ("binance\x7f", "BTC-USDT", "unknown_venue"),
        ("Binance", "BTC-USDT", "unknown_venue"),
        ("b" * 33, "BTC-USDT", "unknown_venue"),
    ],
)
def test_symbol_and_venue_are_whole_string_matches(
    venue: str, symbol: str, reason: str | None
) -> None:
    venues = ("binance", "binance\n", "binance\x7f", "b" * 33)  # allow-listed, still refused
    b = _trade()
    b.venue, b.symbol = venue, symbol
    got = _validator(venues=venues).record_reason(b, f"{venue}:{symbol}".encode())
    assert (got[0] if got else None) == reason


def test_the_kafka_key_must_name_the_payloads_instrument() -> None:
    v = _validator()
    b = _trade()
    assert v.record_reason(b, b"binance:BTC-USDT") is None
    assert v.record_reason(b, None) == ("missing_key", "expected binance:BTC-USDT")
    for key in (b"binance:ETH-USDT", b"kraken:BTC-USDT", b"", b"binance:BTC-USDT\n", b"\xff"):
        reason, detail = v.record_reason(b, key)  # type: ignore[misc]
        assert reason == "key_mismatch" and detail.endswith("is not binance:BTC-USDT")
    reason, detail = v.record_reason(b, b"x" * 10_000)  # type: ignore[misc]
    assert reason == "key_mismatch" and len(detail) < 100  # details are clipped


def test_quote_and_bar_rules() -> None:
    v = _validator()
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
    key = b"file:BTC-USDT"
    assert v.record_reason(bars, key) is None
    bars.timeframe = "7m"
    assert v.record_reason(bars, key) == ("unknown_timeframe", "7m")


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({}, None),
        ({"bid_price": 101.0}, None),  # a locked quote (bid = ask)
        ({"bid_price": 102.0}, "crossed_quote"),
        ({"bid_price": 40.0}, "wide_quote"),  # ask more than twice the bid
        ({"ask_price": 1e308}, "price_out_of_range"),
        ({"bid_price": 1e-320, "ask_price": 1e-320}, "price_out_of_range"),
        ({"bid_price": -0.0}, "non_positive_price"),
        ({"bid_price": [99.0]}, "wrong_type"),
        ({"ask_price": None}, "wrong_type"),
        ({"bid_size": 0.0}, None),  # an empty side
        ({"ask_size": -0.0}, "negative_size"),
        ({"ask_size": 1e16}, "size_out_of_range"),
        ({"bid_size": "1"}, "wrong_type"),
        ({"seq": -7}, "id_out_of_range"),
        ({"seq": None}, None),
        ({"ts_recv": NOW - 3600 * SEC}, "recv_before_event"),
    ],
)
def test_quote_rules(over: dict[str, object], reason: str | None) -> None:
    assert _validator().event_reasons(_quote(**over), NOW) == [reason]


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({}, None),
        ({"vwap": None}, None),  # absent
        ({"vwap": 9.0}, None),  # at the low
        ({"vwap": 12.0 * (1 + 1e-12)}, None),  # a venue's rounding
        ({"vwap": 12.5}, "bad_vwap"),
        ({"vwap": 1e308}, "bad_vwap"),
        ({"vwap": -0.0}, "bad_vwap"),
        ({"vwap": "10.5"}, "wrong_type"),
        ({"trades": None}, None),
        ({"trades": -1}, "bad_trade_count"),
        ({"trades": 2**62 + 1}, "bad_trade_count"),
        ({"trades": 3.0}, "wrong_type"),
        ({"flags": 3}, None),
        ({"flags": 4}, "bad_flags"),
        ({"flags": -1}, "bad_flags"),
        ({"flags": 2**40}, "bad_flags"),  # would not fit the table's smallint
        ({"low": 11.5}, "bad_bar"),  # above the open
        ({"high": 10.5}, "bad_bar"),  # below the close
        ({"low": 0.1, "open": 0.1}, "wide_bar"),  # high 120x the low
        ({"open": 1e308}, "price_out_of_range"),
        ({"close": -0.0}, "non_positive_price"),
        ({"high": [12.0]}, "wrong_type"),
        ({"volume": 0.0, "trades": 0, "vwap": None}, None),
        ({"volume": 1e19}, "volume_out_of_range"),
        ({"volume": 1e-320}, "volume_out_of_range"),
        ({"volume": -0.0}, "negative_size"),
        ({"volume": True}, "wrong_type"),
        ({"ts_event": NOW + 3600 * SEC}, "future_timestamp"),
    ],
)
def test_bar_rules(over: dict[str, object], reason: str | None) -> None:
    assert _validator().event_reasons(_bar(**over), NOW) == [reason]


def test_gap_markers_need_a_known_reason() -> None:
    v = _validator()
    key = b"binance:BTC-USDT"
    for reason in sorted(GAP_REASONS):
        gap = _decoded("gap", {"ts_event": NOW - SEC, "ts_recv": NOW}, reason=reason)
        assert v.record_reason(gap, key) is None
        assert v.event_reasons(gap, NOW) == [None]
    for odd in ("weather", "reconnect\n", "RECONNECT", None):
        gap = _decoded("gap", {"ts_event": NOW - SEC, "ts_recv": NOW}, reason=odd)
        assert v.record_reason(gap, key) == ("bad_gap_reason", str(odd))
    gap = _decoded("gap", {"ts_event": 5, "ts_recv": NOW}, reason="reconnect")
    assert v.event_reasons(gap, NOW) == ["implausible_timestamp"]


def test_collectors_gap_reasons_are_known() -> None:
    """The reasons streams/venues/base.py writes must pass validation."""
    assert {"reconnect", "resubscribe", "sequence_gap", "unsubscribed"} <= GAP_REASONS


def test_duplicates_are_per_instrument_and_out_of_order_ids_pass() -> None:
    v = _validator(dedup_window=64)
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
    v = _validator()
    first = _trades([1, 2, 2, 3], prices=[10.0, 10.0, 10.0, -1.0])
    want = [None, None, "duplicate_trade_id", "non_positive_price"]
    assert v.event_reasons(first, NOW, source_id(0, 41)) == want
    assert v.event_reasons(first, NOW, source_id(0, 41)) == want  # redelivered


def test_the_same_ids_in_another_record_are_duplicates() -> None:
    v = _validator()
    assert v.event_reasons(_trades([1, 2]), NOW, source_id(0, 41)) == [None, None]
    later = _trades([2, 3])
    assert v.event_reasons(later, NOW, source_id(0, 42)) == ["duplicate_trade_id", None]
    assert v.event_reasons(later, NOW, source_id(0, 42)) == ["duplicate_trade_id", None]
    # same offset, another partition: another record
    assert v.event_reasons(_trades([1]), NOW, source_id(1, 41)) == ["duplicate_trade_id"]
