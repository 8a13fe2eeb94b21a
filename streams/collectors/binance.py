"""Binance spot: trades, closed klines and best bid/ask over one combined stream.

Follows the Binance spot "WebSocket Streams" documentation: a combined stream
`/stream?streams=btcusdt@trade/btcusdt@kline_1m/btcusdt@bookTicker` wraps each payload as
`{"stream": ..., "data": ...}`. Binance sends `m` = "buyer is the maker", so the aggressor
sold when it is true. Trade ids are consecutive per symbol, which makes gaps detectable.
Only closed klines (`x: true`) are emitted: the bar stage takes bar events as closed bars.
"""

from __future__ import annotations

import math
from typing import Any, Final

from schemas.events import TIMEFRAMES, Kind, Side
from streams.collectors.base import (
    Collector,
    Event,
    MalformedFrameError,
    integer,
    ms_to_ns,
    number,
    split_concatenated,
    text,
)

QUOTES: Final = (
    "USDT", "USDC", "FDUSD", "TUSD", "BUSD", "DAI", "BTC", "ETH", "BNB", "EUR", "GBP", "TRY",
    "BRL", "JPY", "AUD", "USD",
)  # fmt: skip


class BinanceCollector(Collector):
    venue = "binance"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.settings.collector_timeframe not in TIMEFRAMES:
            raise ValueError(f"no {self.settings.collector_timeframe} klines")

    def url(self) -> str:
        tf = self.settings.collector_timeframe
        streams = []
        for symbol in self.symbols:
            v = self.to_venue(symbol).lower()
            streams += [f"{v}@trade", f"{v}@kline_{tf}", f"{v}@bookTicker"]
        return f"{self.settings.binance_ws_url.rstrip('/')}/stream?streams={'/'.join(streams)}"

    @staticmethod
    def to_venue(symbol: str) -> str:
        return symbol.replace("-", "")

    @staticmethod
    def from_venue(venue_symbol: str) -> str:
        return split_concatenated(venue_symbol, QUOTES)

    def parse(self, msg: Any, ts_recv: int) -> list[Event]:
        if not isinstance(msg, dict):
            raise MalformedFrameError("not_object", type(msg).__name__)
        if "result" in msg and "id" in msg:
            return []  # reply to a control request
        stream = msg.get("stream")
        data = msg.get("data") if stream is not None else msg
        if not isinstance(data, dict):
            raise MalformedFrameError("unknown_shape", "no data object")
        kind = data.get("e")
        if kind == "trade":
            return [self._trade(data, ts_recv)]
        if kind == "kline":
            return self._kline(data, ts_recv)
        if kind is None and isinstance(stream, str) and stream.endswith("@bookTicker"):
            return [self._book_ticker(data, ts_recv)]
        if kind is None and "u" in data and "b" in data and "a" in data:
            return [self._book_ticker(data, ts_recv)]  # raw (non-combined) bookTicker
        raise MalformedFrameError("unknown_type", f"e={kind!r} stream={stream!r}")

    def _trade(self, d: dict[str, Any], ts_recv: int) -> Event:
        maker_is_buyer = d.get("m")
        if not isinstance(maker_is_buyer, bool):
            raise MalformedFrameError("bad_field", f"m={maker_is_buyer!r}")
        trade_id = integer(d, "t")
        return Event(
            Kind.TRADE,
            self.symbol_of(d.get("s")),
            {
                "ts_event": ms_to_ns(integer(d, "T")),
                "ts_recv": ts_recv,
                "price": number(d, "p"),
                "size": number(d, "q"),
                "side": int(Side.SELL if maker_is_buyer else Side.BUY),
                "trade_id": trade_id,
            },
            order=trade_id,
            contiguous=True,
        )

    def _kline(self, d: dict[str, Any], ts_recv: int) -> list[Event]:
        k = d.get("k")
        if not isinstance(k, dict):
            raise MalformedFrameError("bad_field", "k")
        closed = k.get("x")
        if not isinstance(closed, bool):
            raise MalformedFrameError("bad_field", f"x={closed!r}")
        tf = text(k, "i")
        if tf not in TIMEFRAMES:
            raise MalformedFrameError("bad_field", f"i={tf!r}")
        symbol = self.symbol_of(d.get("s"))
        if not closed:
            return []  # the forming bar: updates of it are not bars yet
        volume = number(k, "v")
        quote_volume = number(k, "q")
        open_ns = ms_to_ns(integer(k, "t"))
        return [
            Event(
                Kind.BAR,
                symbol,
                {
                    "ts_event": open_ns,
                    "ts_recv": ts_recv,
                    "open": number(k, "o"),
                    "high": number(k, "h"),
                    "low": number(k, "l"),
                    "close": number(k, "c"),
                    "volume": volume,
                    "trades": integer(k, "n"),
                    "vwap": quote_volume / volume if volume > 0 else math.nan,
                },
                order=open_ns,
                timeframe=tf,
            )
        ]

    def _book_ticker(self, d: dict[str, Any], ts_recv: int) -> Event:
        update_id = integer(d, "u")
        return Event(
            Kind.QUOTE,
            self.symbol_of(d.get("s")),
            {
                # the spot bookTicker carries no venue time: receipt time is the best we have
                "ts_event": ms_to_ns(integer(d, "E")) if "E" in d else ts_recv,
                "ts_recv": ts_recv,
                "bid_price": number(d, "b"),
                "bid_size": number(d, "B"),
                "ask_price": number(d, "a"),
                "ask_size": number(d, "A"),
                "seq": update_id,
            },
            order=update_id,
        )
