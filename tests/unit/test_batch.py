"""The wire envelope: round trips, per-event type errors, and record-level reason codes."""

from __future__ import annotations

import json
import time

import numpy as np
import orjson
import pytest

from schemas.batch import (
    COLUMNS,
    DECODE_CACHE,
    CodecError,
    DecodeCache,
    MarketEventBatch,
    decode_batch,
)
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


# ---- decode once per process: the cache, and the read-only batches it shares ----


def _record(n: int = 4, stamp: int = 1) -> bytes:
    """A distinct record per `stamp`, so tests never meet another test's cache entries."""
    return _trades(n).encode(collector_out=stamp)


def _copy_of(data: bytes) -> bytes:
    """Equal bytes in a new object: what each consumer gets from the broker."""
    return bytes(bytearray(data))


def test_equal_record_is_decoded_once_and_shared_read_only() -> None:
    data = _record(stamp=time.time_ns())
    hits, misses = DECODE_CACHE.hits, DECODE_CACHE.misses
    first = decode_batch(data)
    again = decode_batch(_copy_of(data))
    assert (DECODE_CACHE.hits - hits, DECODE_CACHE.misses - misses) == (1, 1)
    # not decoded again: the very same arrays come back, with the same values
    for name, col in first.cols.items():
        assert again.cols[name] is col
    assert again.key == first.key and again.stamps == first.stamps and len(again) == 4
    # each caller owns its batch object, so rebinding a column or a stamp stays local
    assert again is not first and again.cols is not first.cols
    again.stamps["mine"] = 1
    again.cols["price"] = again.cols["price"] * 2
    assert "mine" not in decode_batch(data).stamps
    np.testing.assert_array_equal(decode_batch(data).cols["price"], [1.5] * 4)


def test_decoded_arrays_are_read_only_but_select_and_encode_still_work() -> None:
    batch = decode_batch(orjson.dumps(_doc(price=[1.0, "x"])))
    with pytest.raises(ValueError, match="read-only"):
        batch.cols["price"][0] = 2.0
    with pytest.raises(ValueError, match="read-only"):
        batch.cols["ts_event"] += 1
    with pytest.raises(ValueError, match="read-only"):
        batch.cols["seq"].sort()
    assert batch.bad_type is not None
    with pytest.raises(ValueError, match="read-only"):
        batch.bad_type[0] = True
    part = batch.select(np.array([True, False]))
    part.cols["price"][0] = 3.0  # a selection is a copy of its own
    assert batch.cols["price"].tolist()[0] == 1.0
    back = decode_batch(batch.encode(validate_out=7))
    assert back.cols["ts_event"].tolist() == [1, 2] and back.stamps == {"validate_out": 7}


def test_raw_event_of_a_cached_batch_is_what_arrived() -> None:
    data = orjson.dumps({**_doc(price=[1.0, "x"]), "stamps": {"t": time.time_ns()}})
    decode_batch(data)
    hits = DECODE_CACHE.hits
    batch = decode_batch(_copy_of(data))
    assert DECODE_CACHE.hits == hits + 1
    assert batch.raw_event(1)["price"] == "x" and batch.raw_event(0)["price"] == 1.0


def test_cache_evicts_least_recently_used_beyond_its_entries() -> None:
    cache = DecodeCache(max_entries=2, max_bytes=1 << 30)
    a, b, c = (_record(stamp=s) for s in (1, 2, 3))
    first_a = cache.decode(a)
    cache.decode(b)
    assert cache.decode(_copy_of(a)).cols["price"] is first_a.cols["price"]  # a is now newest
    cache.decode(c)  # evicts b, the least recently used
    assert len(cache) == 2 and cache.misses == 3
    assert cache.decode(_copy_of(a)).cols["price"] is first_a.cols["price"]
    assert cache.misses == 3
    cache.decode(_copy_of(b))
    assert cache.misses == 4  # b was decoded again


def test_cache_evicts_beyond_its_bytes_and_skips_records_larger_than_it() -> None:
    small = [_record(n=4, stamp=s) for s in range(3)]
    cost = len(small[0]) + 7 * 4 * 8  # the record and its seven 8-byte columns
    cache = DecodeCache(max_entries=100, max_bytes=2 * cost)
    for data in small:
        cache.decode(data)
        assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 2 and cache.nbytes == 2 * cost
    cache.decode(_copy_of(small[0]))
    assert cache.misses == 4  # the oldest went to make room
    big = _record(n=200, stamp=9)
    first = cache.decode(big)
    assert cache.decode(big).cols["price"] is not first.cols["price"]  # never kept
    assert cache.nbytes <= cache.max_bytes and len(cache) == 2
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_codec_errors_are_not_cached() -> None:
    cache = DecodeCache(max_entries=8, max_bytes=1 << 20)
    data = orjson.dumps({**_doc(), "n": 3})
    for attempt in (1, 2):
        with pytest.raises(CodecError) as err:
            cache.decode(_copy_of(data))
        assert err.value.reason == "malformed"
        assert cache.misses == attempt and cache.hits == 0 and len(cache) == 0


def test_int_columns_take_exact_ints_only() -> None:
    # a boolean, or a value outside int64 (which would wrap around), is the wrong type
    batch = decode_batch(orjson.dumps(_doc(trade_id=[1, True], seq=[2**63, 5])))
    assert batch.bad_type is not None and batch.bad_type.tolist() == [True, True]
    assert batch.raw_event(0)["seq"] == 2**63 and batch.raw_event(1)["trade_id"] is True
    batch = decode_batch(orjson.dumps(_doc(trade_id=[2**63 - 1, -(2**63)], side=[None, None])))
    assert batch.bad_type is None
    assert batch.cols["trade_id"].tolist() == [2**63 - 1, -(2**63)]
    assert batch.cols["side"].tolist() == [0, 0]  # an optional column sent as nulls


def test_an_event_count_beyond_the_record_is_malformed_not_allocated() -> None:
    with pytest.raises(CodecError) as err:
        decode_batch(orjson.dumps({**_doc(), "n": 10**15}))
    assert err.value.reason == "malformed"


# ---- exact shapes: every column 1-D, n values, its dtype; anything else flagged or refused ----

_NESTED_AND_ODD: list[object] = [
    [1.0],  # one-element nested: np.asarray made this a 2-D column that passed validation
    [[1.0]],
    [1.0, 2.0],
    [],
    {},
    {"v": 1.0},
    "1.0",
    "NaN",
    "Infinity",
    "1e999",
    True,
    False,
]


@pytest.mark.parametrize("value", _NESTED_AND_ODD)
@pytest.mark.parametrize("column", ["price", "size", "ts_event", "ts_recv", "trade_id", "side"])
def test_odd_values_are_flagged_per_event_in_every_column(column: str, value: object) -> None:
    good: dict[str, object] = {
        "price": 1.0,
        "size": 1.0,
        "ts_event": 1,
        "ts_recv": 1,
        "trade_id": 1,
        "side": 1,
    }
    cols = {name: [v, v] for name, v in good.items()}
    cols[column] = [value, good[column]]
    batch = decode_batch(orjson.dumps(_doc(**cols)))
    _assert_exact(batch, 2)
    assert batch.bad_type is not None and batch.bad_type.tolist() == [True, False]


@pytest.mark.parametrize(
    ("values", "dtype", "bad"),
    [
        ([[1.0], [2.0]], "f8", [True, True]),  # equal-length nesting: was a (2, 1) array
        ([[1.0], [2.0, 3.0]], "f8", [True, True]),  # ragged: was a ValueError
        ([True, 1.0], "f8", [True, False]),  # was silently 1.0
        ([1, 2.5], "f8", [False, False]),  # ints are numbers
        ([2**63, 1.0], "f8", [False, False]),  # int64 max + 1 is still a number
        ([None, 1.0], "f8", [True, False]),  # null in a required column
        ([1, True], "i8", [False, True]),
        ([1.0, 2], "i8", [True, False]),  # a float in an int column, even an integral one
        ([-0.0, 2], "i8", [True, False]),
        ([2**63, -(2**63)], "i8", [True, False]),  # beyond int64 / int64 min
        ([18446744073709551615, 1], "i8", [True, False]),  # u64 max (orjson reads it)
        ([[1], [2]], "i8", [True, True]),
    ],
)
def test_column_shapes_and_types_are_exact(
    values: list[object], dtype: str, bad: list[bool]
) -> None:
    column = "price" if dtype == "f8" else "ts_event"
    batch = decode_batch(orjson.dumps(_doc(**{column: values})))
    _assert_exact(batch, 2)
    got = batch.bad_type.tolist() if batch.bad_type is not None else [False, False]
    assert got == bad


def test_numbers_beyond_64_bits_are_wrong_type_in_int_columns() -> None:
    # orjson reads integers beyond 64 bits as floats: not an int64, so the wrong type
    text = b'{"v":1,"kind":"trade","venue":"binance","symbol":"BTC-USDT","n":2,"cols":{'
    text += b'"ts_event":[100000000000000000000000000000,1],"ts_recv":[1,-9223372036854775809],'
    text += b'"price":[100000000000000000000000000000,1e308],"size":[1e-320,-0.0]}}'
    batch = decode_batch(text)
    _assert_exact(batch, 2)
    assert batch.bad_type is not None and batch.bad_type.tolist() == [True, True]
    assert batch.cols["price"].tolist() == [1e29, 1e308]  # numbers: validation bounds them
    assert np.signbit(batch.cols["size"][1]) and batch.cols["size"][0] == 1e-320


@pytest.mark.parametrize(
    "change",
    [
        {"price": [1.0]},  # too short
        {"price": [1.0, 2.0, 3.0]},  # too long
        {"price": 1.0},  # a scalar, not a list
        {"price": {"0": 1.0, "1": 2.0}},
        {"price": "1.0,2.0"},
        {"ts_event": None},  # a required column as a whole null: missing
        {"side": [1]},  # an optional column present but of the wrong length
        {"seq": 5},
    ],
)
def test_a_column_of_the_wrong_length_or_kind_rejects_the_record(change: dict[str, object]) -> None:
    with pytest.raises(CodecError) as err:
        decode_batch(orjson.dumps(_doc(**change)))
    assert err.value.reason == "malformed"


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        ({"v": True}, "unknown_version"),  # equals 1, but is no version
        ({"v": 1.0}, "unknown_version"),
        ({"v": "1"}, "unknown_version"),
        ({"kind": ["trade"]}, "unknown_kind"),  # unhashable: was a TypeError
        ({"kind": {"k": 1}}, "unknown_kind"),
        ({"kind": None}, "unknown_kind"),
        ({"n": 2.0}, "malformed"),
        ({"n": "2"}, "malformed"),
        ({"n": -2}, "malformed"),
        ({"n": [2]}, "malformed"),
        ({"venue": ["binance"]}, "malformed"),
        ({"symbol": None}, "malformed"),
        ({"symbol": ""}, "malformed"),
        ({"symbol": "B" * 65}, "malformed"),  # not a name: would fill every dead letter
        ({"cols": [1, 2]}, "malformed"),
        ({"stamps": [1]}, "malformed"),
        ({"kind": "bar", "tf": ["1m"]}, "malformed"),
        ({"kind": "bar", "tf": "1" * 65}, "malformed"),
        ({"kind": "gap", "reason": 5}, "malformed"),
    ],
)
def test_envelope_fields_of_the_wrong_type_reject_the_record(
    envelope: dict[str, object], reason: str
) -> None:
    with pytest.raises(CodecError) as err:
        decode_batch(orjson.dumps({**_doc(), **envelope}))
    assert err.value.reason == reason


def test_stamps_keep_int64_only_and_tf_reason_their_kinds_only() -> None:
    stamps = {"a": 1, "b": True, "c": 2**63, "d": "x", "e": [1], "f": -5}
    batch = decode_batch(orjson.dumps({**_doc(), "stamps": stamps, "tf": "1m", "reason": "r"}))
    assert batch.stamps == {"a": 1, "f": -5}
    assert batch.timeframe is None and batch.reason is None  # a trade has neither
    batch.encode()  # re-encodable: what validate does with a partly valid record


def test_dead_letter_events_are_always_writable() -> None:
    deep: object = 1.0
    for _ in range(400):  # deeper than orjson writes (255), shallower than it reads (1024)
        deep = [deep]
    doc = _doc(price=[deep, 1.0], size=[{"k": [1, 2]}, 1.0])
    doc["cols"]["extra"] = 5  # type: ignore[index]  # not per-event: left out
    doc["cols"]["short"] = [1]  # type: ignore[index]
    batch = decode_batch(json.dumps(doc).encode())  # orjson cannot write it
    assert batch.bad_type is not None and batch.bad_type.tolist() == [True, False]
    event = batch.raw_event(0)
    assert isinstance(event["price"], str) and event["price"].startswith("[[[")
    assert event["size"] == {"k": [1, 2]}
    assert "extra" not in event and "short" not in event
    orjson.dumps(event)


def _assert_exact(batch: MarketEventBatch, n: int) -> None:
    assert len(batch) == n
    for name, spec in COLUMNS[batch.kind].items():
        col = batch.cols[name]
        assert col.shape == (n,) and col.dtype == spec.dtype, (name, col.shape, col.dtype)
    if batch.bad_type is not None:
        assert batch.bad_type.shape == (n,) and batch.bad_type.dtype == np.bool_
