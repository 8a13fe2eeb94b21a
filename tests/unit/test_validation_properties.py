"""Property tests of the trust boundary: decode → validate → the kernels of the later stages.

1. Decoding any bytes, or any JSON-ish document (nested lists, objects, nulls, booleans,
   huge integers, floats, strings with control characters, wrong lengths), either raises
   `CodecError` or returns exactly-shaped columns; the validator then never raises, gives
   one reason per event, and every dead letter and every forwarded record can be written.
2. Whatever passes validation goes through the pure kernels bars, indicators and damping
   the way agents/bars.py, agents/indicators.py and agents/damping.py drive them, without
   raising, and yields only finite values or the documented nulls (indicator warm-up, a
   VWAP without volume).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.bars import Bar, BarBook, MultiBook, bars_to_columns
from kernels.damping import damp
from kernels.indicators import IndicatorConfig, IndicatorState
from kernels.validation import MAX_BOUND, MIN_BOUND, ValidationRules, Validator, source_id
from schemas.batch import COLUMNS, CodecError, MarketEventBatch, decode_batch
from schemas.deadletter import dead_letter
from schemas.events import GAP_REASONS, NS_PER_S, TIMEFRAMES, BarFlag, Kind
from streams.settings import Settings

NOW: Final = 1_750_000_000 * NS_PER_S  # a fixed "now": examples replay exactly
MIN: Final = 60 * NS_PER_S
INT64_MAX: Final = 2**63 - 1
CODEC_REASONS: Final = {"malformed_json", "malformed", "unknown_version", "unknown_kind"}
DEFAULT_RULES: Final = ValidationRules.from_settings(Settings())
# The widest bounds the rules accept: the worst case for the later stages' arithmetic.
WIDEST_RULES: Final = ValidationRules.from_settings(
    Settings(
        min_price=MIN_BOUND,
        max_price=MAX_BOUND,
        min_size=MIN_BOUND,
        max_size=MAX_BOUND,
        max_volume=MAX_BOUND,
        max_quote_spread=MAX_BOUND,
        max_bar_range=MAX_BOUND,
        max_event_id=INT64_MAX,
        max_recv_before_event_ms=10**12,
    )
)

# ---- 1. decode and validate anything ---------------------------------------------------

_CONTROL = "\x00\x01\x07\x08\t\n\x0b\x0c\r\x1b\x7f\x85\u2028\u2029\ufeff"
TEXT = st.text(alphabet=st.sampled_from("aZ09-_:." + _CONTROL) | st.characters(), max_size=12)
NUMBERS = st.one_of(
    st.integers(-(2**64), 2**64),
    st.integers(-(2**200), 2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 1e-320, 5e-324, 2.0**63, 2**63, 2**63 - 1]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSONISH = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3),
    max_leaves=6,
)
NAMES = st.one_of(
    st.sampled_from(["binance", "sim_kraken", "oanda", "nasdaq", "binance\n", "Binance", ""]),
    st.sampled_from(["BTC-USDT", "EUR-USD", "BTC-USDT\n", "btc-usdt", "A" * 70, "B-\x00"]),
    TEXT,
    JSONISH,
)


def _cell(spec_kind: str) -> st.SearchStrategy[Any]:
    """A column cell: mostly of the right JSON type, sometimes anything at all."""
    right: st.SearchStrategy[Any] = (
        st.integers(-(2**63), 2**63 - 1)
        if spec_kind == "i"
        else st.floats(allow_nan=False, allow_infinity=False)
    )
    plausible = (
        st.integers(NOW - 3600 * NS_PER_S, NOW)
        if spec_kind == "i"
        else st.floats(min_value=1e-3, max_value=1e6)
    )
    return st.one_of(plausible, plausible, right, JSONISH)


@st.composite
def documents(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """(record bytes, Kafka key): near a valid record, with anything anywhere."""
    kind = draw(st.sampled_from(["trade", "quote", "bar", "gap"]) | JSONISH)
    spec = COLUMNS[Kind(kind)] if kind in ("trade", "quote", "bar", "gap") else COLUMNS[Kind.TRADE]
    n = draw(st.integers(1, 6))
    cols: dict[str, Any] = {}
    for name, column in spec.items():
        how = draw(st.integers(0, 9))
        if how == 0:
            continue  # omitted
        if how == 1:
            cols[name] = draw(JSONISH)  # not a list (or a list of another length)
        elif how == 2:
            cols[name] = draw(st.lists(_cell(column.dtype.kind), max_size=8))
        else:
            cols[name] = draw(st.lists(_cell(column.dtype.kind), min_size=n, max_size=n))
    if draw(st.booleans()):
        cols[draw(TEXT)] = draw(JSONISH)  # an unknown member of cols
    doc: dict[str, Any] = {
        "v": draw(st.just(1) | JSONISH),
        "kind": kind,
        "venue": draw(NAMES),
        "symbol": draw(NAMES),
        "n": draw(st.just(n) | st.just(n) | JSONISH),
        "cols": draw(st.just(cols) | st.just(cols) | JSONISH),
    }
    for member in ("tf", "reason", "stamps"):
        if draw(st.booleans()):
            doc[member] = draw(
                st.sampled_from(["1m", "7m", *sorted(GAP_REASONS)])
                | st.dictionaries(TEXT, NUMBERS, max_size=3)
                | JSONISH
            )
    # stdlib json: it writes any int (orjson stops at 64 bits); NaN never occurs here
    data = json.dumps(doc).encode()
    venue, symbol = doc["venue"], doc["symbol"]
    right_key = f"{venue}:{symbol}".encode("utf-8", "surrogatepass")
    key = draw(st.sampled_from([right_key, right_key, None, b"other:KEY"]) | st.binary(max_size=8))
    return data, key


def _check_decoded(batch: MarketEventBatch) -> None:
    n = len(batch)
    assert n >= 1
    for name, spec in COLUMNS[batch.kind].items():
        col = batch.cols[name]
        assert isinstance(col, np.ndarray) and col.shape == (n,) and col.dtype == spec.dtype
    assert set(batch.cols) == set(COLUMNS[batch.kind])
    if batch.bad_type is not None:
        assert batch.bad_type.shape == (n,) and batch.bad_type.dtype == np.bool_
    assert isinstance(batch.venue, str) and isinstance(batch.symbol, str)
    assert all(type(v) is int and -(2**63) <= v < 2**63 for v in batch.stamps.values())


def _validate_like_the_stage(
    validator: Validator, batch: MarketEventBatch, key: bytes | None, source: int
) -> list[str | None]:
    """What agents/validate.py does with a decoded record, minus the broker."""
    shared = validator.record_reason(batch, key)
    n = len(batch)
    reasons: list[str | None] = (
        [shared[0]] * n if shared else validator.event_reasons(batch, NOW, source)
    )
    assert len(reasons) == n
    for i, reason in enumerate(reasons):
        assert reason is None or (isinstance(reason, str) and reason)
        if batch.bad_type is not None and batch.bad_type[i] and not shared:
            assert reason == "wrong_type"
        if reason is not None:
            letter = dead_letter(
                stage="validate",
                reason=reason,
                detail=shared[1] if shared else "",
                source=("md.trades.v1", 0, source),
                key=key,
                event=batch.raw_event(i),
            )
            assert orjson.loads(letter)["reason"] == reason
    ok = np.array([r is None for r in reasons], dtype=bool)
    if ok.any() and not ok.all():
        forwarded = decode_batch(batch.select(ok).encode(validate_out=NOW))
        _check_decoded(forwarded)
        assert forwarded.bad_type is None and len(forwarded) == int(ok.sum())
        again = validator.event_reasons(forwarded, NOW, source)  # same source: no duplicates
        assert again == [None] * len(forwarded)
    return reasons


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.integers(0, 2**40))
def test_any_document_decodes_exactly_or_is_a_codec_error(
    record: tuple[bytes, bytes | None], offset: int
) -> None:
    data, key = record
    try:
        batch = decode_batch(data)
    except CodecError as exc:
        assert exc.reason in CODEC_REASONS
        return
    _check_decoded(batch)
    for rules in (DEFAULT_RULES, WIDEST_RULES):
        _validate_like_the_stage(Validator(rules), batch, key, source_id(0, offset))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=60).map(str.encode))
def test_any_bytes_decode_or_are_a_codec_error(data: bytes) -> None:
    try:
        batch = decode_batch(data)
    except CodecError as exc:
        assert exc.reason in CODEC_REASONS
        return
    _check_decoded(batch)


# ---- 2. what passes validation is safe for the later stages -------------------------------

_EXTREMES = [0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e308, 1e-320, 5e-324, 1.0]


def _values(low: float, high: float) -> st.SearchStrategy[float]:
    """Values at and around the bounds and typical ones (mostly), and sometimes the
    non-finite, negative, denormal or merely out-of-bounds."""
    inside = st.one_of(
        st.sampled_from([low, high, low * 2, high / 2]),
        st.floats(min_value=low, max_value=high),
        st.floats(min_value=1.0, max_value=1.01),
    )
    beyond = st.floats(min_value=high, max_value=1e308) | st.floats(min_value=0, max_value=low)
    return st.one_of(inside, inside, inside, beyond, st.sampled_from(_EXTREMES), st.floats())


@st.composite
def trade_records(draw: st.DrawFn, rules: ValidationRules) -> list[MarketEventBatch]:
    """1-4 trade records of one instrument over up to ~6 hours, with extreme values, in
    or out of time order, with some repeated, missing or out-of-range trade ids."""
    prices = _values(rules.min_price, rules.max_price)
    sizes = _values(rules.min_size, rules.max_size) | st.just(0.0)
    ids = {"repeat": 7, "missing": -1, "max": rules.max_event_id, "int64_max": INT64_MAX}
    count = draw(st.integers(1, 120))
    spacing = draw(st.sampled_from([0, NS_PER_S, MIN, 3 * MIN]))
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, MIN),
                prices,
                sizes,
                st.sampled_from([-1, 0, 1, -1, 0, 1, 2]),
                st.sampled_from(["fresh"] * 8 + list(ids)),
            ),
            min_size=count,
            max_size=count,
        )
    )
    start = NOW - 400 * MIN
    ts_all = [start + i * spacing + jitter for i, (jitter, *_) in enumerate(rows)]
    order = list(range(count))
    if draw(st.booleans()):
        order = draw(st.permutations(order))  # late and out-of-order ticks
    cuts = sorted(draw(st.lists(st.integers(1, count), max_size=3)))
    out = []
    for lo, hi in zip([0, *cuts], [*cuts, count], strict=True):
        part = order[lo:hi]
        if not part:
            continue
        ts = np.array([ts_all[i] for i in part], dtype=np.int64)
        out.append(
            MarketEventBatch.from_columns(
                Kind.TRADE,
                "binance",
                "BTC-USDT",
                {
                    "ts_event": ts,
                    "ts_recv": ts + 1000,
                    "price": np.array([rows[i][1] for i in part]),
                    "size": np.array([rows[i][2] for i in part]),
                    "side": np.array([rows[i][3] for i in part]),
                    "trade_id": np.array([ids.get(rows[i][4], 100 + i) for i in part]),
                },
            )
        )
    return out


@st.composite
def bar_records(draw: st.DrawFn, rules: ValidationRules) -> MarketEventBatch:
    """Closed bars from an OHLCV source (passed straight to md.bars.v1 by the bars stage)."""
    prices = _values(rules.min_price, rules.max_price)
    volumes = _values(rules.min_size, rules.max_volume) | st.just(0.0)
    n = draw(st.integers(1, 60))
    level = draw(prices)  # one price level per record: extremes reach whole bars
    moves = st.sampled_from([1.0, 1.0, 0.999, 1.001, 0.5, 2.0])
    cols: dict[str, Any] = {name: [] for name in COLUMNS[Kind.BAR]}
    for i in range(n):
        o, c = level * draw(moves), level * draw(moves)
        if draw(st.integers(0, 3)) != 3:  # mostly consistent bars around the level
            h, lo = max(o, c) * draw(moves | st.just(1.0)), min(o, c)
        else:
            o, c, h, lo = draw(prices), draw(prices), draw(prices), draw(prices)
        cols["ts_event"].append(NOW - (n - i) * MIN)
        cols["ts_recv"].append(NOW)
        for name, value in zip(("open", "high", "low", "close"), (o, h, lo, c), strict=True):
            cols[name].append(value)
        cols["volume"].append(draw(volumes))
        cols["trades"].append(draw(st.integers(0, 10) | st.sampled_from([-1, INT64_MAX])))
        cols["vwap"].append(draw(st.sampled_from([math.nan, o, c, (o + c) / 2]) | prices))
        cols["flags"].append(draw(st.sampled_from([0, 1, 2, 3, 0, 4, -1])))
    return MarketEventBatch.from_columns(
        Kind.BAR, "binance", "BTC-USDT", {k: np.array(v) for k, v in cols.items()}, timeframe="1m"
    )


def _valid_part(
    validator: Validator, batch: MarketEventBatch, source: int
) -> MarketEventBatch | None:
    assert validator.record_reason(batch, batch.key.encode()) is None
    reasons = validator.event_reasons(batch, NOW, source)
    assert len(reasons) == len(batch)
    ok = np.array([r is None for r in reasons], dtype=bool)
    if not ok.any():
        return None
    # what validate forwards, and bars/indicators/damping read back from md.events.v1
    return decode_batch(batch.select(ok).encode(validate_out=NOW))


def _check_bar(bar: Bar, rules: ValidationRules) -> None:
    for price in (bar.open, bar.high, bar.low, bar.close):
        assert math.isfinite(price) and rules.min_price <= price <= rules.max_price
    assert bar.low <= min(bar.open, bar.close) and bar.high >= max(bar.open, bar.close)
    assert math.isfinite(bar.volume) and bar.volume >= 0 and math.isfinite(bar.notional)
    assert bar.trades > 0 and bar.flags & ~(BarFlag.GAP | BarFlag.CORRECTED) == 0
    vwap = bar.vwap
    assert math.isfinite(vwap) if bar.volume > 0 else math.isnan(vwap)  # documented null


def _bars_stage(records: list[MarketEventBatch], rules: ValidationRules) -> dict[str, list[Bar]]:
    """agents/bars.py's use of kernels.bars: each record applied, then due bars closed."""
    higher = {tf: s * NS_PER_S for tf, s in TIMEFRAMES.items() if tf != "1m"}
    base = BarBook(period_ns=MIN, grace_ns=2 * NS_PER_S, horizon=1440)
    book = MultiBook.new(base, "1m", higher, keep_ns=1440 * MIN)
    emitted: dict[str, dict[int, Bar]] = defaultdict(dict)

    def take(bars: dict[str, list[Bar]]) -> None:
        for tf, got in bars.items():
            for bar in got:
                emitted[tf][bar.start] = bar

    for batch in records:
        if batch.kind is Kind.GAP:
            for ts in batch.cols["ts_event"].tolist():
                take(book.mark_gap(ts))
        else:
            fixed, _late = book.add_trades(
                batch.cols["ts_event"], batch.cols["price"], batch.cols["size"], NOW
            )
            take(fixed)
        take(book.close_due(None))
        orjson.dumps(book.to_state())  # the changelog state is writable
    take(book.close_due(NOW + 3 * 86400 * NS_PER_S))  # idle long after: everything closes
    out = {}
    for tf, held in emitted.items():
        bars = [held[s] for s in sorted(held)]
        for bar in bars:
            _check_bar(bar, rules)
        out[tf] = bars
    return out


def _bar_record(tf: str, bars: list[Bar]) -> MarketEventBatch:
    """agents/bars.py's md.bars.v1 record, as indicators and damping decode it."""
    cols = bars_to_columns(bars)
    cols["ts_recv"] = np.full(len(bars), NOW, dtype=np.int64)
    record = MarketEventBatch.from_columns(Kind.BAR, "binance", "BTC-USDT", cols, timeframe=tf)
    back = decode_batch(record.encode(bars_out=NOW))
    assert back.bad_type is None
    return back


def _indicators_stage(record: MarketEventBatch, state: IndicatorState, slot: int) -> None:
    """agents/indicators.py's use of IndicatorState: one `update` per bar, in time order."""
    c = record.cols
    order = np.argsort(c["ts_event"], kind="stable")
    warmup = state.warmup
    for i in order.tolist():
        seen = int(state.bars_seen([slot])[0])
        values = state.update(
            np.array([slot], dtype=np.intp),
            np.array([c["ts_event"][i]], dtype=np.int64),
            np.array([c["open"][i]]),
            np.array([c["high"][i]]),
            np.array([c["low"][i]]),
            np.array([c["close"][i]]),
            np.array([c["volume"][i]]),
        )
        for name, value in values.items():
            v = float(value[0])
            assert not math.isinf(v), (name, v)
            if math.isnan(v):  # documented: warm-up, or a VWAP session without volume
                assert seen < warmup[name] or name == "vwap", (name, seen)
        json.dumps(
            {n: (None if math.isnan(float(v[0])) else float(v[0])) for n, v in values.items()}
        )


def _damping_stage(closes: list[float], window: int) -> None:
    """agents/damping.py's use of damp(): every window of `window` closes, in one call."""
    if len(closes) < window:
        return
    rows = np.array([closes[i - window : i] for i in range(window, len(closes) + 1)])
    for dtype in ("float64", "float32"):
        result = damp(rows, None, backend="numpy", dtype=dtype)
        for name in ("entropy", "coherence", "stability", "lam", "value", "confidence"):
            arr: npt.NDArray[Any] = getattr(result, name)
            assert np.isfinite(arr).all(), (dtype, name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(["default", "widest"]), st.booleans())
def test_validated_trades_are_safe_for_bars_indicators_and_damping(
    data: st.DataObject, which: str, prewarm: bool
) -> None:
    rules = DEFAULT_RULES if which == "default" else WIDEST_RULES
    validator = Validator(rules)
    records = data.draw(trade_records(rules))
    valid = [
        part
        for i, batch in enumerate(records)
        if (part := _valid_part(validator, batch, source_id(0, i))) is not None
    ]
    if data.draw(st.booleans()) and valid:  # a gap marker inside the traded range
        ts = int(valid[0].cols["ts_event"][0])
        gap = MarketEventBatch.from_columns(
            Kind.GAP, "binance", "BTC-USDT", {"ts_event": [ts], "ts_recv": [ts]}, reason="reconnect"
        )
        valid.insert(len(valid) // 2, gap)
    emitted = _bars_stage(valid, rules)
    config = IndicatorConfig()
    for tf, bars in emitted.items():
        record = _bar_record(tf, bars)
        state = IndicatorState(config)
        slot = int(state.add_instruments(1)[0])
        closes: list[float] = []
        if prewarm:  # indicators past warm-up meet the extremes too
            level = data.draw(st.sampled_from([rules.min_price, 1.0, rules.max_price]))
            step = TIMEFRAMES[tf] * NS_PER_S
            first = int(record.cols["ts_event"][0])
            warm = [
                Bar(first - k * step, level, level, level, level, 1.0, 1, level, 0, 0)
                for k in range(120, 0, -1)
            ]
            _indicators_stage(_bar_record(tf, warm), state, slot)
            closes = [level] * 120
        _indicators_stage(record, state, slot)
        _damping_stage(closes + record.cols["close"].tolist(), window=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(["default", "widest"]))
def test_validated_ohlcv_bars_are_safe_for_indicators_and_damping(
    data: st.DataObject, which: str
) -> None:
    rules = DEFAULT_RULES if which == "default" else WIDEST_RULES
    record = data.draw(bar_records(rules))
    valid = _valid_part(Validator(rules), record, source_id(0, 1))
    if valid is None:
        return
    c = valid.cols
    assert np.isfinite(c["open"]).all() and np.isfinite(c["volume"]).all()
    assert ((c["flags"] & ~3) == 0).all() and (c["trades"] >= 0).all()
    vwap = c["vwap"]
    assert (np.isnan(vwap) | np.isfinite(vwap)).all()
    state = IndicatorState(IndicatorConfig())
    _indicators_stage(valid, state, int(state.add_instruments(1)[0]))
    _damping_stage(c["close"][np.argsort(c["ts_event"], kind="stable")].tolist(), window=8)


# ---- 3. the vectorised rules equal a plain per-event reading of docs/OPERATIONS.md §10 ------


def _first(checks: list[tuple[str, bool]]) -> str | None:
    return next((reason for reason, failed in checks if failed), None)


def _price_checks(rules: ValidationRules, *prices: float) -> list[tuple[str, bool]]:
    return [
        ("non_finite_price", any(not math.isfinite(p) for p in prices)),
        ("non_positive_price", any(p <= 0 for p in prices)),
        ("price_out_of_range", any(not rules.min_price <= p <= rules.max_price for p in prices)),
    ]


def _size_checks(
    rules: ValidationRules, reason: str, top: float, *sizes: float
) -> list[tuple[str, bool]]:
    return [
        ("non_finite_size", any(not math.isfinite(s) for s in sizes)),
        ("negative_size", any(math.copysign(1.0, s) < 0 for s in sizes)),
        (reason, any(s > top or 0 < s < rules.min_size for s in sizes)),
    ]


def _reference(rules: ValidationRules, kind: Kind, e: dict[str, Any]) -> str | None:
    """One event's reason, read from the rules table one scalar at a time."""
    ts, recv, low = e["ts_event"], e["ts_recv"], rules.min_event_time_ns
    high = NOW + rules.max_future_skew_ns
    checks = [
        ("bad_timestamp", ts <= 0 or recv <= 0),
        ("implausible_timestamp", ts < low or recv < low),
        ("future_timestamp", ts > high or recv > high),
        ("recv_before_event", recv < max(ts, low) - rules.max_recv_before_event_ns),
    ]
    max_id = rules.max_event_id
    seq_bad = "seq" in e and not -1 <= e["seq"] <= max_id
    if kind is Kind.TRADE:
        checks += _price_checks(rules, e["price"])
        checks += _size_checks(rules, "size_out_of_range", rules.max_size, e["size"])
        checks += [
            ("bad_side", not -1 <= e["side"] <= 1),
            ("missing_trade_id", e["trade_id"] < 0),
            ("id_out_of_range", e["trade_id"] > max_id or seq_bad),
        ]
    elif kind is Kind.QUOTE:
        bp, ap = e["bid_price"], e["ask_price"]
        checks += _price_checks(rules, bp, ap)
        checks += _size_checks(
            rules, "size_out_of_range", rules.max_size, e["bid_size"], e["ask_size"]
        )
        checks += [
            ("crossed_quote", bp > ap),
            ("wide_quote", ap / rules.max_quote_spread > bp),
            ("id_out_of_range", seq_bad),
        ]
    elif kind is Kind.BAR:
        o, h, lo, c, vwap = e["open"], e["high"], e["low"], e["close"], e["vwap"]
        vwap_ok = math.isnan(vwap) or (lo * (1 - 1e-9) <= vwap and vwap / (1 + 1e-9) <= h)
        checks += _price_checks(rules, o, h, lo, c)
        checks += [
            ("bad_bar", lo > min(o, c) or h < max(o, c)),
            ("wide_bar", h / rules.max_bar_range > lo),
        ]
        checks += _size_checks(rules, "volume_out_of_range", rules.max_volume, e["volume"])
        checks += [
            ("bad_trade_count", not 0 <= e["trades"] <= max_id),
            ("bad_vwap", not vwap_ok),
            ("bad_flags", e["flags"] & ~3 != 0),
        ]
    return _first(checks)


_IDS = st.one_of(
    st.integers(0, 10**6),
    st.sampled_from([-(2**63), -2, -1, 0, 1, 2, 3, 4, 2**62, 2**62 + 1, 2**63 - 1]),
    st.integers(-(2**63), 2**63 - 1),
)
_TIMES = st.one_of(
    st.integers(NOW - 3600 * NS_PER_S, NOW),
    st.sampled_from([-(2**63), -1, 0, 1, 1_700_000_000_000, NOW + 6 * NS_PER_S, 2**63 - 1]),
    st.integers(-(2**63), 2**63 - 1),
)


@settings(max_examples=400, deadline=None)
@given(st.data(), st.sampled_from([Kind.TRADE, Kind.QUOTE, Kind.BAR, Kind.GAP]))
def test_vectorised_rules_equal_the_per_event_reading(data: st.DataObject, kind: Kind) -> None:
    rules = DEFAULT_RULES
    n = data.draw(st.integers(1, 8))
    prices = _values(rules.min_price, rules.max_price)
    sizes = _values(rules.min_size, rules.max_size) | st.just(0.0)
    plausible = st.integers(1, 3600 * 10**6).map(lambda us: NOW - us * 1000)
    draws: dict[str, st.SearchStrategy[Any]] = {
        "ts_event": st.one_of(plausible, plausible, plausible, plausible, _TIMES),
        "ts_recv": _TIMES,
    }
    if kind is Kind.TRADE:
        sides = st.sampled_from([-1, 0, 1]) | st.sampled_from([-1, 0, 1]) | st.integers(-3, 3)
        draws |= {"price": prices, "size": sizes, "side": sides | _IDS}
        draws |= {"trade_id": _IDS, "seq": _IDS}
    elif kind is Kind.QUOTE:
        draws |= {"bid_price": prices, "ask_price": prices, "bid_size": sizes}
        draws |= {"ask_size": sizes, "seq": _IDS}
    elif kind is Kind.BAR:
        draws |= {name: prices for name in ("open", "high", "low", "close", "vwap")}
        draws |= {"volume": _values(rules.min_size, rules.max_volume) | st.just(0.0)}
        draws |= {"trades": _IDS, "flags": st.integers(-2, 8) | _IDS}
    same = data.draw(st.booleans())  # all events alike: the fast path's usual case
    rows = [{k: data.draw(v) for k, v in draws.items()}] * n if same else []
    rows = rows or [{k: data.draw(v) for k, v in draws.items()} for _ in range(n)]
    cols = {k: np.array([r[k] for r in rows]) for k in draws}
    if data.draw(st.integers(0, 3)) != 3:  # mostly received just after the event
        lag = np.array(data.draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n)))
        cols["ts_recv"] = np.clip(cols["ts_event"], 0, NOW - 10**6) + lag
    if kind is Kind.TRADE:  # distinct ids: duplicates are kernels.dedup's business
        tid = cols["trade_id"]
        cols["trade_id"] = np.where((tid >= 0) & (tid <= 2**62), np.arange(n) * 2**40, tid)
    batch = MarketEventBatch.from_columns(
        kind, "binance", "BTC-USDT", cols, timeframe="1m" if kind is Kind.BAR else None
    )
    got = Validator(rules).event_reasons(batch, NOW)
    events = [{k: v[i].item() for k, v in batch.cols.items()} for i in range(n)]
    assert got == [_reference(rules, kind, e) for e in events]
