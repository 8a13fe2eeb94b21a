"""The wire envelope: round trips, per-event type errors, and record-level reason codes."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from schemas.batch import CodecError, MarketEventBatch, decode_batch
from schemas.events import Kind


def _trades(n: int = 3) -> MarketEventBatch:
    ts = 1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64)
    return MarketEventBatch.from_columns(
        Kind.TRADE,
        "binance",
        "BTC-USDT",
        {
            "ts_event": ts,
            "ts_recv": ts + 5,
            "price": [1.5] * n,
            "size": [2.0] * n,
            "side": [1] * n,
            "trade_id": np.arange(n) + 10,
        },
    )


def test_round_trip_keeps_values_dtypes_and_fills_optional_columns() -> None:
    batch = _trades()
    back = decode_batch(batch.encode(collector_out=42))
    assert back.kind is Kind.TRADE and back.key == "binance:BTC-USDT"
    assert back.stamps == {"collector_out": 42}
    for name, col in batch.cols.items():
        assert back.cols[name].dtype == col.dtype
        np.testing.assert_array_equal(back.cols[name], col)
    assert back.cols["seq"].tolist() == [-1, -1, -1]
    assert back.bad_type is None


def test_events_are_the_logical_records() -> None:
    events = _trades(2).events()
    assert [e.trade_id for e in events] == [10, 11]
    assert events[0].seq is None and events[0].price == 1.5


def _doc(**cols: object) -> dict[str, object]:
    base = {
        "ts_event": [1, 2],
        "ts_recv": [1, 2],
        "price": [1.0, 2.0],
        "size": [1.0, 1.0],
        "trade_id": [1, 2],
    }
    base.update(cols)
    return {"v": 1, "kind": "trade", "venue": "binance", "symbol": "BTC-USDT", "n": 2, "cols": base}


def test_wrong_type_is_flagged_per_event_not_per_record() -> None:
    batch = decode_batch(orjson.dumps(_doc(price=[1.0, "2.0"], size=[None, 1.0])))
    assert batch.bad_type is not None
    assert batch.bad_type.tolist() == [True, True]  # None size in a required column, str price
    batch = decode_batch(orjson.dumps(_doc(price=[1.0, "x"])))
    assert batch.bad_type is not None and batch.bad_type.tolist() == [False, True]
    assert batch.raw_event(1)["price"] == "x"  # dead letters carry what arrived


def test_null_in_optional_column_is_absent_not_bad() -> None:
    batch = decode_batch(orjson.dumps(_doc(seq=[None, 7])))
    assert batch.bad_type is None
    assert batch.cols["seq"].tolist() == [-1, 7]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "malformed_json"),
        (b"[1,2]", "malformed"),
        (orjson.dumps({**_doc(), "v": 2}), "unknown_version"),
        (orjson.dumps({**_doc(), "kind": "order"}), "unknown_kind"),
        (orjson.dumps({**_doc(), "n": 3}), "malformed"),
        (orjson.dumps({**_doc(), "n": True}), "malformed"),
        (orjson.dumps({**_doc(), "venue": 5}), "malformed"),
        (orjson.dumps(_doc(price=None)), "malformed"),
        (orjson.dumps({**_doc(), "kind": "bar"}), "malformed"),
    ],
)
def test_record_level_errors_have_reason_codes(data: bytes, reason: str) -> None:
    with pytest.raises(CodecError) as err:
        decode_batch(data)
    assert err.value.reason == reason


def test_select_keeps_only_chosen_rows() -> None:
    batch = _trades(4)
    part = batch.select(np.array([True, False, True, False]))
    assert part.cols["trade_id"].tolist() == [10, 12]
    assert len(part) == 2
