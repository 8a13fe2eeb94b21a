"""Redelivery is not duplication: a trades record read twice (a rebalance, or the commit
watchdog re-reading a partition after the broker stalled) must get the same answers both
times, or its events would be dead-lettered as duplicates of themselves and never forwarded.
Found by the broker-pause fault test; checked here without services."""

from __future__ import annotations

import time

import numpy as np

from agents.validate import Validator, source_id
from schemas.batch import MarketEventBatch
from schemas.events import Kind
from streams.settings import Settings

NOW = time.time_ns()


def _trades(ids: list[int], prices: list[float] | None = None) -> MarketEventBatch:
    n = len(ids)
    return MarketEventBatch.from_columns(
        Kind.TRADE,
        "binance",
        "BTC-USDT",
        {
            "ts_event": np.full(n, NOW - 10**9),
            "ts_recv": np.full(n, NOW),
            "price": np.array(prices or [10.0] * n),
            "size": np.ones(n),
            "trade_id": np.array(ids),
        },
    )


def test_a_record_read_again_gets_the_same_answers() -> None:
    v = Validator(Settings())
    first = _trades([1, 2, 2, 3], [10.0, 10.0, 10.0, -1.0])
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
