"""Binance spot: trades, closed klines and best bid/ask over one combined stream.

Follows the Binance spot "WebSocket Streams" documentation: a combined stream
`/stream?streams=btcusdt@trade/btcusdt@kline_1m/btcusdt@bookTicker` wraps each payload as
`{"stream": ..., "data": ...}`. Binance sends `m` = "buyer is the maker", so the aggressor
sold when it is true. Trade ids are consecutive per symbol, which makes gaps detectable.
Only closed klines (`x: true`) are emitted: the bar stage takes bar events as closed bars.
Symbols added or removed at runtime are applied on the open connection with the documented
`SUBSCRIBE` / `UNSUBSCRIBE` requests ("Live Subscribing/Unsubscribing to streams"); the URL
of a later reconnect lists the current set. `BinanceKlines` is the REST history for the
backfill (`GET /api/v3/klines`, "Market Data endpoints").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Final

import aiohttp
import structlog

from schemas.events import TIMEFRAMES, Kind, Side
from streams.settings import Settings
from streams.venues.base import (
    Collector,
    Event,
    MalformedFrameError,
    integer,
    ms_to_ns,
    number,
    split_concatenated,
    text,
)
from streams.venues.history import MINUTE_MS, MinuteBar, PacedClient, keep_sane

log = structlog.get_logger(__name__)

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
        self._request_ids = itertools.count(1)

    def streams(self, symbols: Sequence[str]) -> list[str]:
        """The stream names of `symbols`: trades, klines of our timeframe, best bid/ask."""
        tf = self.settings.collector_timeframe
        out = []
        for symbol in symbols:
            v = self.to_venue(symbol).lower()
            out += [f"{v}@trade", f"{v}@kline_{tf}", f"{v}@bookTicker"]
        return out

    def url(self) -> str:
        base = self.settings.binance_ws_url.rstrip("/")
        return f"{base}/stream?streams={'/'.join(self.streams(self.symbols))}"

    def resubscribe_messages(
        self, added: Sequence[str], removed: Sequence[str]
    ) -> list[Any] | None:
        out: list[Any] = []
        for method, symbols in (("UNSUBSCRIBE", removed), ("SUBSCRIBE", added)):
            if symbols:
                params = self.streams(symbols)
                out.append({"method": method, "params": params, "id": next(self._request_ids)})
        return out

    @staticmethod
    def to_venue(symbol: str) -> str:
        return symbol.replace("-", "")

    @staticmethod
    def from_venue(venue_symbol: str) -> str:
        return split_concatenated(venue_symbol, QUOTES)

    def parse(self, msg: Any, ts_recv: int) -> list[Event]:
        if not isinstance(msg, dict):
            raise MalformedFrameError("not_object", type(msg).__name__)
        if "id" in msg and "result" in msg:
            return []  # reply to a control request
        if "id" in msg and ("error" in msg or "code" in msg):
            raise MalformedFrameError("venue_error", repr(msg.get("error") or msg.get("msg")))
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


class BinanceKlines:
    """1m klines from `GET /api/v3/klines`: arrays of [open time, o, h, l, c, volume, close
    time, quote volume, trades, ...], paged by `startTime` (`page` rows per request)."""

    venue = "binance"
    page = 1000  # klines per request (Binance's maximum)

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.client = PacedClient(settings, session, "binance klines")

    @property
    def requests(self) -> int:
        return self.client.requests

    async def fetch(self, symbol: str, first_ms: int, last_ms: int) -> list[MinuteBar]:
        url = f"{self.settings.binance_rest_url.rstrip('/')}/api/v3/klines"
        out: list[MinuteBar] = []
        start = first_ms
        while start <= last_ms:
            page = await self.client.get_json(
                url,
                {
                    "symbol": BinanceCollector.to_venue(symbol),
                    "interval": "1m",
                    "startTime": str(start),
                    "endTime": str(last_ms + MINUTE_MS - 1),
                    "limit": str(self.page),
                },
            )
            if not isinstance(page, list):
                raise RuntimeError(f"klines answer is not a list: {str(page)[:200]}")
            rows = [r for r in page if isinstance(r, list) and r and isinstance(r[0], int)]
            for row in rows:
                bar = _kline_bar(row) if first_ms <= row[0] <= last_ms else None
                if bar is not None:
                    out.append(bar)
            if len(page) < self.page or not rows:
                break
            start = rows[-1][0] + MINUTE_MS
        return keep_sane(out, "binance klines")


def _kline_bar(row: list[Any]) -> MinuteBar | None:
    """A kline row as a bar (vwap = quote volume / volume); None (logged) if unreadable."""
    try:
        volume, quote_volume = float(row[5]), float(row[7])
        return MinuteBar(
            ms=int(row[0]),
            open=float(row[1]),
            high=float(row[2]),
            low=float(row[3]),
            close=float(row[4]),
            volume=volume,
            trades=int(row[8]),
            vwap=quote_volume / volume if volume > 0 else math.nan,
        )
    except (ValueError, TypeError, IndexError):
        log.warning("kline skipped", row=str(row)[:200])
        return None
