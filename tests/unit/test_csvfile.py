"""The CSV file source: every supported form parsed value by value, bad rows kept and counted."""

from __future__ import annotations

import gzip
import math
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas.batch import COLUMNS
from schemas.events import Kind
from streams.sources import csvfile, csvvalues
from streams.sources.csvfile import produce, read_csv, split_pair, symbol_from_filename

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
NS = 1_000_000_000


def _eq(actual: np.ndarray[Any, Any], expected: list[Any]) -> None:
    np.testing.assert_array_equal(actual, np.asarray(expected))


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_binance_trades_ms_without_header() -> None:
    before = time.time_ns()
    data = read_csv(FIXTURES / "BTCUSDT-trades-2024-01-01.csv")
    after = time.time_ns()
    assert (data.kind, data.venue, data.symbol, data.timeframe) == (
        Kind.TRADE,
        "file",
        "BTC-USDT",
        None,
    )
    assert len(data) == 3 and data.bad_rows == 0 and data.bad_lines == ()
    c = data.columns
    assert set(c) == set(COLUMNS[Kind.TRADE])
    _eq(c["ts_event"], [T0 * NS + 123_000_000, T0 * NS + 456_000_000, (T0 + 1) * NS + 789_000_000])
    _eq(c["price"], [42283.58, 42283.59, 42283.58])
    _eq(c["size"], [0.001, 0.05, 0.00012])
    _eq(c["side"], [1, -1, 1])  # buyer is maker → the aggressor sold
    _eq(c["trade_id"], [1000001, 1000002, 1000003])
    _eq(c["seq"], [-1, -1, -1])
    assert np.all(c["ts_recv"] == c["ts_recv"][0])
    assert before <= c["ts_recv"][0] <= after
    for name, spec in COLUMNS[Kind.TRADE].items():
        assert c[name].dtype == spec.dtype, name


def test_binance_trades_us_without_header() -> None:
    data = read_csv(FIXTURES / "ETHUSDT-trades-2025-03-01.csv", venue="binance")
    t = 1_740_787_200 * NS  # 2025-03-01T00:00:00Z
    assert (data.symbol, data.venue, data.bad_rows) == ("ETH-USDT", "binance", 0)
    c = data.columns
    _eq(c["ts_event"], [t + 123_000, t + 456_000, t + 999_999_000])
    _eq(c["price"], [3350.12, 3350.13, 3350.10])
    _eq(c["size"], [0.5, 1.25, 0.0042])
    _eq(c["side"], [-1, 1, -1])
    _eq(c["trade_id"], [2000001, 2000002, 2000003])


def test_binance_trades_with_header_are_sorted_by_time() -> None:
    data = read_csv(FIXTURES / "SOLUSDT-trades-2024-01-01.csv")
    c = data.columns
    assert data.symbol == "SOL-USDT" and data.bad_rows == 0
    _eq(c["trade_id"], [500, 501, 502])  # stable: equal times keep file order
    _eq(c["ts_event"], [T0 * NS, (T0 + 5) * NS, (T0 + 5) * NS])
    _eq(c["price"], [150.20, 150.25, 150.30])
    _eq(c["size"], [2.5, 10.0, 1.0])
    _eq(c["side"], [1, -1, 1])


def test_bad_rows_are_kept_as_nan_and_counted() -> None:
    data = read_csv(FIXTURES / "XRPUSDT-trades-bad.csv")
    assert data.bad_rows == 4
    assert data.bad_lines == (2, 3, 5, 6)  # physical lines; line 4 is blank and skipped
    c = data.columns
    assert len(data) == 6
    # rows whose time did not parse have ts 0 and sort first: the short row, then id 13
    _eq(c["trade_id"], [-1, 13, 10, 11, 14, 15])
    _eq(c["ts_event"], [0, 0, T0 * NS, (T0 + 1) * NS, (T0 + 4) * NS, (T0 + 5) * NS])
    price = c["price"]
    assert [math.isnan(p) for p in price.tolist()] == [True, True, False, True, True, False]
    assert price[2] == 1.10 and price[5] == 1.15
    _eq(c["size"][1:], [100.0, 100.0, 100.0, 100.0, 100.0])
    assert math.isnan(c["size"][0])  # the short row has no fields at all
    _eq(c["side"], [0, 1, 1, -1, 0, -1])


def test_bad_rows_are_found_in_later_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csvfile, "_CHUNK_BYTES", 64)  # a few lines per chunk
    lines = [f"{i},{1 + i / 100},1,1,{(T0 + i) * 1000},True" for i in range(40)]
    lines[25] = "25,oops,1,1,1704067225000,True"
    path = _write(tmp_path, "ADAUSDT-trades.csv", "\n".join(lines) + "\n")
    data = read_csv(path)
    assert len(data) == 40 and data.bad_rows == 1 and data.bad_lines == (26,)
    _eq(data.columns["trade_id"], list(range(40)))
    assert math.isnan(data.columns["price"][25])


def test_fast_and_slow_parsers_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [
        "BTCUSDT-trades-2024-01-01.csv",
        "SOLUSDT-trades-2024-01-01.csv",
        "BTC-EUR-5m-iso.csv",
        "ETHUSDT-1h-epoch-ms.csv",
    ]
    fast = [read_csv(FIXTURES / p) for p in paths]

    def refuse(*args: object) -> None:
        raise ValueError("forced slow path")

    monkeypatch.setattr(csvfile, "_fast_fields", refuse)
    slow = [read_csv(FIXTURES / p) for p in paths]
    for a, b in zip(fast, slow, strict=True):
        assert a.columns.keys() == b.columns.keys()
        for name in a.columns:
            if name != "ts_recv":
                np.testing.assert_array_equal(a.columns[name], b.columns[name])
                assert a.columns[name].dtype == b.columns[name].dtype


def test_ohlcv_iso_times_with_and_without_zone() -> None:
    data = read_csv(FIXTURES / "BTC-EUR-5m-iso.csv")
    assert (data.kind, data.symbol, data.timeframe, data.bad_rows) == (
        Kind.BAR,
        "BTC-EUR",
        "5m",
        0,
    )
    c = data.columns
    assert set(c) == set(COLUMNS[Kind.BAR])
    _eq(c["ts_event"], [(T0 + k * 300) * NS for k in range(4)])  # +01:00 row moved to 00:10Z
    _eq(c["open"], [42000.0, 42050.0, 42010.0, 41950.0])
    _eq(c["high"], [42100.5, 42080.0, 42020.0, 42000.0])
    _eq(c["low"], [41950.0, 42000.0, 41900.5, 41940.0])
    _eq(c["close"], [42050.0, 42010.0, 41950.0, 41990.0])
    _eq(c["volume"], [12.5, 8.25, 20.0, 0.0])
    _eq(c["trades"], [0, 0, 0, 0])
    _eq(c["flags"], [0, 0, 0, 0])
    assert np.isnan(c["vwap"]).all()
    for name, spec in COLUMNS[Kind.BAR].items():
        assert c[name].dtype == spec.dtype, name


def test_ohlcv_epoch_ms_with_a_missing_bar() -> None:
    data = read_csv(FIXTURES / "ETHUSDT-1h-epoch-ms.csv")
    assert (data.symbol, data.timeframe) == ("ETH-USDT", "1h")  # lower median ignores the gap
    c = data.columns
    _eq(c["ts_event"], [T0 * NS, (T0 + 3600) * NS, (T0 + 3 * 3600) * NS])
    _eq(c["open"], [2280.5, 2285.0, 2300.0])
    _eq(c["close"], [2285.0, 2300.0, 2260.0])
    _eq(c["volume"], [1500.5, 1800.0, 2500.75])
    _eq(c["trades"], [321, 402, 610])


@pytest.mark.parametrize(
    ("stamp", "unit"),
    [
        (f"{T0}", "s"),
        (f"{T0}.5", "s+0.5"),
        (f"{T0 * 1000}", "ms"),
        (f"{T0 * 1_000_000}", "us"),
        (f"{T0 * NS}", "ns"),
        ("2024-01-01T00:00:00", "naive iso"),
        ("2024-01-01T05:30:00+05:30", "zoned iso"),
        ("2024-01-01", "date"),
    ],
)
def test_epoch_unit_is_decided_by_magnitude(tmp_path: Path, stamp: str, unit: str) -> None:
    path = _write(tmp_path, "x.csv", f"ts,open,high,low,close,volume\n{stamp},1,1,1,1,1\n")
    data = read_csv(path, symbol="BTC-USDT", timeframe="1d")
    expected = T0 * NS + (NS // 2 if unit == "s+0.5" else 0)
    _eq(data.columns["ts_event"], [expected])


def test_epoch_thresholds() -> None:
    assert (csvvalues.SECONDS_BELOW, csvvalues.MILLIS_BELOW, csvvalues.MICROS_BELOW) == (
        10**11,
        10**14,
        10**17,
    )
    cases = [  # (raw value, expected ns or None when beyond int64 ns)
        (9 * 10**9, 9 * 10**18),  # seconds (year 2255)
        (10**11 - 1, None),  # still seconds, but after 2262
        (10**11, 10**17),  # milliseconds
        (9 * 10**12, 9 * 10**18),
        (10**14 - 1, None),
        (10**14, 10**17),  # microseconds
        (9 * 10**15, 9 * 10**18),
        (10**17 - 1, None),
        (10**17, 10**17),  # nanoseconds
        (1_704_067_200_123_456_789, 1_704_067_200_123_456_789),
    ]
    ns, bad = csvvalues.epoch_ns(np.array([raw for raw, _ in cases], dtype=np.int64))
    assert bad.tolist() == [want is None for _, want in cases]
    _eq(ns, [0 if want is None else want for _, want in cases])


def test_binance_klines_without_header(tmp_path: Path) -> None:
    rows = [
        f"{(T0 + 60 * k) * 1000},{100 + k},{101 + k},{99 + k},{100.5 + k},2,"
        f"{(T0 + 60 * k + 59) * 1000 + 999},{201 + 2 * k},{7 + k},1,100,0"
        for k in range(3)
    ]
    path = _write(tmp_path, "BNBUSDT-1m-2024-01-01.csv", "\n".join(rows) + "\n")
    data = read_csv(path)
    assert (data.kind, data.symbol, data.timeframe) == (Kind.BAR, "BNB-USDT", "1m")
    c = data.columns
    _eq(c["ts_event"], [(T0 + 60 * k) * NS for k in range(3)])
    _eq(c["open"], [100.0, 101.0, 102.0])
    _eq(c["trades"], [7, 8, 9])
    _eq(c["vwap"], [100.5, 101.5, 102.5])  # quote volume / volume


def test_ohlcv_bad_row_has_nan_prices(tmp_path: Path) -> None:
    text = (
        "timestamp,open,high,low,close,volume\n"
        f"{T0},1,2,0.5,1.5,10\n"
        f"{T0 + 60},1.5,2,x,1.2,4\n"
        f"{T0 + 120},1.2,1.3,1.1,1.25,3\n"
    )
    data = read_csv(_write(tmp_path, "ETHBTC-1m.csv", text))
    assert (data.symbol, data.timeframe, data.bad_rows, data.bad_lines) == (
        "ETH-BTC",
        "1m",
        1,
        (3,),
    )
    c = data.columns
    for name in ("open", "high", "low", "close"):
        assert math.isnan(c[name][1]) and not np.isnan(c[name][[0, 2]]).any()
    _eq(c["volume"], [10.0, 4.0, 3.0])


def test_timeframe_override_and_errors(tmp_path: Path) -> None:
    path = FIXTURES / "BTC-EUR-5m-iso.csv"
    assert read_csv(path, timeframe="15m").timeframe == "15m"
    with pytest.raises(ValueError, match="timeframe '2m'"):
        read_csv(path, timeframe="2m")
    two_min = _write(
        tmp_path,
        "BTCUSDT.csv",
        f"ts,open,high,low,close,volume\n{T0},1,1,1,1,1\n{T0 + 120},1,1,1,1,1\n",
    )
    with pytest.raises(ValueError, match="120 s matches no timeframe"):
        read_csv(two_min)
    one = _write(tmp_path, "BTCUSDT-one.csv", f"ts,open,high,low,close,volume\n{T0},1,1,1,1,1\n")
    with pytest.raises(ValueError, match="fewer than two bars"):
        read_csv(one)
    assert read_csv(one, timeframe="1h").timeframe == "1h"


def test_trade_files_ignore_timeframe() -> None:
    data = read_csv(FIXTURES / "BTCUSDT-trades-2024-01-01.csv", timeframe="1m")
    assert data.timeframe is None


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("BTCUSDT-trades-2024-01-01.csv", "BTC-USDT"),
        ("ETHBTC-trades-2024-01-01.zip", "ETH-BTC"),
        ("FDUSDUSDT-trades-2024-01.csv", "FDUSD-USDT"),
        ("BTCFDUSD-aggTrades-2024-01.csv", "BTC-FDUSD"),
        ("BTCTUSD-trades.csv", "BTC-TUSD"),
        ("SOLBNB-1m-2024-01.csv.gz", "SOL-BNB"),
        ("eurgbp_1h.csv", "EUR-GBP"),
        ("BTC-USD-1m.csv", "BTC-USD"),
        ("XRPTRY.csv", "XRP-TRY"),
        ("data.csv", None),
        ("USDT-trades.csv", None),
    ],
)
def test_symbol_from_filename(name: str, symbol: str | None) -> None:
    assert symbol_from_filename(name) == symbol


def test_symbol_given_or_error(tmp_path: Path) -> None:
    src = (FIXTURES / "BTCUSDT-trades-2024-01-01.csv").read_text()
    anon = _write(tmp_path, "trades.csv", src)
    with pytest.raises(ValueError, match="cannot infer the symbol"):
        read_csv(anon)
    assert read_csv(anon, symbol="btc-usdt").symbol == "BTC-USDT"
    assert read_csv(anon, symbol="ethusdc").symbol == "ETH-USDC"
    assert split_pair("BTCXYZ") is None
    with pytest.raises(ValueError, match="not BASE-QUOTE"):
        read_csv(anon, symbol="BTC/USDT")
    with pytest.raises(ValueError, match="venue"):
        read_csv(anon, symbol="BTC-USDT", venue="Binance")


def test_zip_and_gzip(tmp_path: Path) -> None:
    src = FIXTURES / "ETHUSDT-trades-2025-03-01.csv"
    plain = read_csv(src)
    zipped = tmp_path / "ETHUSDT-trades-2025-03-01.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(src, src.name)
    gz = tmp_path / "ETHUSDT-trades-2025-03-01.csv.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    for path in (zipped, gz):
        data = read_csv(path)
        assert data.symbol == "ETH-USDT"
        for name in ("ts_event", "price", "size", "side", "trade_id"):
            np.testing.assert_array_equal(data.columns[name], plain.columns[name])


def test_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-bom.csv"
    path.write_bytes(b"\xef\xbb\xbfts,open,high,low,close,volume\r\n1704067200,1,2,0.5,1.5,3\r\n")
    data = read_csv(path, timeframe="1m")
    _eq(data.columns["ts_event"], [T0 * NS])
    _eq(data.columns["close"], [1.5])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty file"),
        ("\n\n", "empty file"),
        (f"{T0},1,2,0.5,1.5,10\n", "OHLCV files need the header"),
        ("a,b,c\n1,2,3\n", "is neither OHLCV"),
        ("1,2,3\n", "3 fields and no header"),
    ],
)
def test_unrecognised_files(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_csv(_write(tmp_path, "BTCUSDT-x.csv", text))


def test_header_only_trade_file_is_empty(tmp_path: Path) -> None:
    path = _write(tmp_path, "BTCUSDT-empty.csv", "id,price,qty,quote_qty,time,is_buyer_maker\n")
    data = read_csv(path)
    assert len(data) == 0 and data.kind is Kind.TRADE
    assert set(data.columns) == set(COLUMNS[Kind.TRADE])


class FakeProducer:
    """Records what a source hands over (the Kafka path is tested elsewhere)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Kind, str, str, dict[str, Any], str | None]] = []

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
        self.calls.append((kind, venue, symbol, columns, timeframe))


async def test_produce_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer()
    n = await produce(producer, FIXTURES / "BTC-EUR-5m-iso.csv", venue="kraken")
    assert n == 4
    data = read_csv(FIXTURES / "BTC-EUR-5m-iso.csv")
    assert [c[:3] for c in producer.calls] == [(Kind.BAR, "kraken", "BTC-EUR")]
    assert producer.calls[0][4] == "5m"
    for name in ("ts_event", "open", "close", "volume"):
        _eq(producer.calls[0][3][name], data.columns[name].tolist())


async def test_produce_trades_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvfile, "_PRODUCE_ROWS", 7)
    lines = [f"{i},{100 + i},1,1,{(T0 + i) * 1000},False" for i in range(30)]
    path = _write(tmp_path, "LTCUSDT-trades.csv", "\n".join(lines) + "\n")
    producer = FakeProducer()
    assert await produce(producer, path) == 30
    assert [len(c[3]["ts_event"]) for c in producer.calls] == [7, 7, 7, 7, 2]
    assert {c[:3] for c in producer.calls} == {(Kind.TRADE, "file", "LTC-USDT")}
    ids = np.concatenate([c[3]["trade_id"] for c in producer.calls])
    _eq(ids, list(range(30)))
    assert all(c[4] is None for c in producer.calls)
