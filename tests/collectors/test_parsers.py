"""Each venue's parser against messages shaped like its documentation, field by field."""

from __future__ import annotations

import math
from typing import Any

import pytest

from schemas.events import Kind, Side
from streams.settings import Settings
from streams.venues import COLLECTORS, normalize_symbols
from streams.venues.base import Collector, Event, MalformedFrameError, rfc3339_ns
from streams.venues.binance import BinanceCollector
from streams.venues.coinbase import CoinbaseCollector
from streams.venues.connection import backoff_delay
from streams.venues.kraken import KrakenCollector
from streams.venues.oanda import OandaCollector
from tests.collectors.helpers import RecordingSink, frames

RECV = 1_704_067_300_000_000_000


def make(cls: type[Collector], symbols: list[str]) -> Collector:
    if cls is OandaCollector:
        return OandaCollector(Settings(), symbols, RecordingSink(), token="t", account="001-1")
    return cls(Settings(), symbols, RecordingSink())


def parse_all(collector: Collector, msgs: list[Any]) -> list[Event]:
    out: list[Event] = []
    for msg in msgs:
        out += collector.parse(msg, RECV)
    return out


def test_binance_trades_klines_quotes() -> None:
    c = make(BinanceCollector, ["BTC-USDT", "ETH-USDT"])
    msgs = frames("binance")
    t1, t2, t3, bar, quote = parse_all(c, msgs)
    assert t1.kind is Kind.TRADE and t1.symbol == "BTC-USDT"
    assert t1.columns == {
        "ts_event": 1_704_067_200_121_000_000,
        "ts_recv": RECV,
        "price": 42283.58,
        "size": 0.0012,
        "side": Side.SELL,  # m: buyer is maker -> the aggressor sold
        "trade_id": 3359101001,
    }
    assert (t1.order, t1.contiguous) == (3359101001, True)
    assert t2.columns["side"] == Side.BUY and t2.columns["trade_id"] == 3359101002
    assert t3.symbol == "ETH-USDT" and t3.columns["price"] == 2281.5  # extra field tolerated
    # the forming kline (x: false) gives nothing; the closed one a 1m bar at its open time
    assert c.parse(msgs[3], RECV) == []
    assert bar.kind is Kind.BAR and bar.timeframe == "1m" and bar.symbol == "BTC-USDT"
    assert bar.columns == {
        "ts_event": 1_704_067_200_000_000_000,
        "ts_recv": RECV,
        "open": 42283.58,
        "high": 42295.1,
        "low": 42280.0,
        "close": 42290.0,
        "volume": 12.5,
        "trades": 100,
        "vwap": 528600.0 / 12.5,
    }
    assert quote.kind is Kind.QUOTE and quote.order == 40090021701
    assert quote.columns == {
        "ts_event": RECV,  # the spot bookTicker has no venue time
        "ts_recv": RECV,
        "bid_price": 42283.58,
        "bid_size": 1.2,
        "ask_price": 42283.59,
        "ask_size": 0.4,
        "seq": 40090021701,
    }
    assert c.url() == (
        "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/btcusdt@kline_1m/"
        "btcusdt@bookTicker/ethusdt@trade/ethusdt@kline_1m/ethusdt@bookTicker"
    )


def test_binance_kline_without_volume_has_no_vwap() -> None:
    c = make(BinanceCollector, ["BTC-USDT"])
    msg = frames("binance")[4]
    msg["data"]["k"].update(v="0", q="0")
    (bar,) = c.parse(msg, RECV)
    assert math.isnan(bar.columns["vwap"])


def test_coinbase_matches_are_maker_side_and_ticker_quotes() -> None:
    c = make(CoinbaseCollector, ["BTC-USD"])
    msgs = frames("coinbase")
    assert c.parse(msgs[0], RECV) == [] and c.parse(msgs[4], RECV) == []
    (last,) = c.parse(msgs[1], RECV)
    assert last.columns == {
        "ts_event": 1_704_067_200_512_345_000,
        "ts_recv": RECV,
        "price": 42280.0,
        "size": 0.005,
        "side": Side.SELL,  # the maker bought -> the aggressor sold
        "trade_id": 572010001,
        "seq": 71234567001,
    }
    (match,) = c.parse(msgs[2], RECV)
    assert match.columns["side"] == Side.BUY and match.columns["price"] == 42281.01
    assert (match.order, match.contiguous, match.symbol) == (572010002, True, "BTC-USD")
    (quote,) = c.parse(msgs[3], RECV)
    assert quote.kind is Kind.QUOTE and quote.order == 71234567010
    assert quote.columns == {
        "ts_event": 1_704_067_201_000_002_000,
        "ts_recv": RECV,
        "bid_price": 42280.99,
        "bid_size": 0.25,
        "ask_price": 42281.01,
        "ask_size": 1.1,
        "seq": 71234567010,
    }
    with pytest.raises(MalformedFrameError) as err:
        c.parse(msgs[5], RECV)
    assert err.value.reason == "venue_error"
    assert c.subscribe_messages() == [
        {
            "type": "subscribe",
            "product_ids": ["BTC-USD"],
            "channels": ["matches", "ticker", "heartbeat"],
        }
    ]


def test_kraken_trades_taker_side_candles_on_close_and_quotes() -> None:
    c = make(KrakenCollector, ["BTC-USD"])
    msgs = frames("kraken")
    for control in msgs[:3]:
        assert c.parse(control, RECV) == []
    sell, buy = c.parse(msgs[3], RECV)
    assert sell.columns == {
        "ts_event": 1_704_067_201_123_456_000,
        "ts_recv": RECV,
        "price": 42280.1,
        "size": 0.015,
        "side": Side.SELL,  # v2 side is the taker's
        "trade_id": 68371701,
    }
    assert buy.columns["side"] == Side.BUY and buy.order == 68371702 and not buy.contiguous
    # two updates of the forming candle, then the next interval closes it (last version)
    assert c.parse(msgs[4], RECV) == [] and c.parse(msgs[5], RECV) == []
    (bar,) = c.parse(msgs[6], RECV)
    assert bar.kind is Kind.BAR and bar.timeframe == "1m" and bar.symbol == "BTC-USD"
    assert bar.columns == {
        "ts_event": 1_704_067_200_000_000_000,
        "ts_recv": RECV,
        "open": 42270.0,
        "high": 42290.5,
        "low": 42265.0,
        "close": 42280.2,
        "volume": 3.2,
        "trades": 12,
        "vwap": 42278.3,
    }
    (quote,) = c.parse(msgs[7], RECV)
    assert quote.columns == {
        "ts_event": 1_704_067_201_200_000_000,
        "ts_recv": RECV,
        "bid_price": 42280.0,
        "bid_size": 0.5,
        "ask_price": 42280.1,
        "ask_size": 1.25,
    }
    with pytest.raises(MalformedFrameError) as err:
        c.parse(msgs[8], RECV)
    assert err.value.reason == "venue_error"
    channels = [m["params"]["channel"] for m in c.subscribe_messages()]
    assert channels == ["trade", "ohlc", "ticker"]
    assert c.subscribe_messages()[1]["params"] == {
        "channel": "ohlc",
        "symbol": ["BTC/USD"],
        "interval": 1,
    }


def test_oanda_prices_are_top_of_book_quotes() -> None:
    c = make(OandaCollector, ["EUR-USD", "USD-JPY"])
    msgs = frames("oanda")
    (eur,) = c.parse(msgs[0], RECV)
    assert eur.kind is Kind.QUOTE and eur.symbol == "EUR-USD"
    assert eur.columns == {
        "ts_event": 1_704_182_400_123_456_789,  # all nine digits kept
        "ts_recv": RECV,
        "bid_price": 1.10234,
        "bid_size": 1_000_000.0,
        "ask_price": 1.10246,
        "ask_size": 1_000_000.0,
    }
    assert eur.order == eur.columns["ts_event"]
    assert c.parse(msgs[1], RECV) == []  # heartbeat
    (jpy,) = c.parse(msgs[2], RECV)
    assert jpy.symbol == "USD-JPY" and jpy.columns["ts_event"] == 1_704_182_406_500_000_000
    assert (jpy.columns["bid_price"], jpy.columns["ask_size"]) == (141.512, 250_000.0)
    assert c.url() == (
        "https://stream-fxpractice.oanda.com/v3/accounts/001-1/pricing/stream"
        "?instruments=EUR_USD,USD_JPY"
    )
    assert c.headers()["Authorization"] == "Bearer t"


def test_oanda_needs_credentials() -> None:
    with pytest.raises(ValueError, match="SEPSTREAM_OANDA_TOKEN"):
        OandaCollector(Settings(), ["EUR-USD"], RecordingSink())
    settings = Settings.from_env(
        {"SEPSTREAM_OANDA_TOKEN": "secret", "SEPSTREAM_OANDA_ACCOUNT": "101-004-1"}
    )
    assert "101-004-1" in OandaCollector(settings, ["EUR-USD"], RecordingSink()).url()
    assert "secret" not in repr(settings)


ROUND_TRIPS = {
    "binance": [("BTC-USDT", "BTCUSDT"), ("ETH-BTC", "ETHBTC"), ("SOL-FDUSD", "SOLFDUSD")],
    "coinbase": [("BTC-USD", "BTC-USD"), ("ETH-EUR", "ETH-EUR")],
    "kraken": [("BTC-USD", "BTC/USD"), ("ETH-EUR", "ETH/EUR")],
    "oanda": [("EUR-USD", "EUR_USD"), ("XAU-USD", "XAU_USD")],
}


@pytest.mark.parametrize("venue", sorted(COLLECTORS))
def test_symbol_mapping_round_trips(venue: str) -> None:
    cls = COLLECTORS[venue]
    for ours, theirs in ROUND_TRIPS[venue]:
        assert cls.to_venue(ours) == theirs
        assert cls.from_venue(theirs) == ours
        assert cls.from_venue(cls.to_venue(ours)) == ours
        assert normalize_symbols(venue, [theirs, ours]) == [ours, ours]


@pytest.mark.parametrize(
    ("venue", "msg", "reason"),
    [
        ("binance", [1, 2], "not_object"),
        ("binance", {"stream": "btcusdt@depth", "data": {"e": "depthUpdate"}}, "unknown_type"),
        ("binance", {"stream": "x@trade", "data": {"e": "trade", "s": "BTCUSDT"}}, "bad_field"),
        (
            "binance",
            {"e": "trade", "s": "XRPUSDT", "t": 1, "p": "1", "q": "1", "T": 1, "m": True},
            "unknown_symbol",
        ),
        ("coinbase", {"type": "match", "product_id": "BTC-USD", "side": "up"}, "bad_field"),
        ("coinbase", {"type": "l2update"}, "unknown_type"),
        ("kraken", {"channel": "trade", "data": "nope"}, "bad_field"),
        ("kraken", {"channel": "book", "data": []}, "unknown_type"),
        ("oanda", {"type": "PRICE", "instrument": "EUR_USD", "bids": [], "asks": []}, "bad_field"),
        ("oanda", {"type": "PRICE", "instrument": "GBP_USD"}, "unknown_symbol"),
        ("oanda", {"type": "WHAT"}, "unknown_type"),
    ],
)
def test_malformed_messages_have_a_reason(venue: str, msg: Any, reason: str) -> None:
    symbols = {"binance": ["BTC-USDT"], "coinbase": ["BTC-USD"], "kraken": ["BTC-USD"]}
    c = make(COLLECTORS[venue], symbols.get(venue, ["EUR-USD"]))
    with pytest.raises(MalformedFrameError) as err:
        c.parse(msg, RECV)
    assert err.value.reason == reason


def test_rfc3339_keeps_nanoseconds_and_offsets() -> None:
    assert rfc3339_ns("1970-01-01T00:00:01Z") == 1_000_000_000
    assert rfc3339_ns("2024-01-02T08:00:00.123456789Z") == 1_704_182_400_123_456_789
    assert rfc3339_ns("2024-01-02T09:00:00.5+01:00") == 1_704_182_400_500_000_000
    for bad in ("2024-01-02", "2024-01-02T08:00:00", "2024-01-02T08:00:00.1234567891Z", "x"):
        with pytest.raises(MalformedFrameError):
            rfc3339_ns(bad)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    for attempt in range(12):
        ceiling = min(5.0, 0.1 * 2**attempt)
        for _ in range(20):
            assert ceiling / 2 <= backoff_delay(attempt, 0.1, 5.0) <= ceiling
    assert len({backoff_delay(3, 0.1, 5.0) for _ in range(20)}) > 1
