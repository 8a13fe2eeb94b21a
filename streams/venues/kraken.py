"""Kraken spot WebSocket v2: `trade`, `ohlc` and best bid/ask from `ticker`.

Follows Kraken's "WebSocket API v2" documentation (ws.kraken.com/v2: Trade, OHLC, Ticker
channels). v2 reports the TAKER's side, which is already our aggressor side. Pairs are
spelled `BTC/USD`. An `ohlc` update re-sends the forming candle; a candle is emitted once,
when the first update of a later interval shows it closed. Subscribing with a snapshot makes
the venue re-send recent trades and candles after a reconnect: the ones we already emitted
are dropped as replays, the newer ones fill part of the hole. Symbols added or removed at
runtime are `subscribe` / `unsubscribe` requests on the open connection, per channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from schemas.events import Kind, Side
from streams.venues.base import (
    Collector,
    Event,
    MalformedFrameError,
    integer,
    number,
    rfc3339_ns,
    text,
)

INTERVALS: Final = {1: "1m", 5: "5m", 15: "15m", 60: "1h", 1440: "1d"}
MINUTES: Final = {tf: minutes for minutes, tf in INTERVALS.items()}
_CONTROL: Final = frozenset({"heartbeat", "status", "pong"})


class KrakenCollector(Collector):
    venue = "kraken"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.settings.collector_timeframe not in MINUTES:
            raise ValueError(f"kraken has no {self.settings.collector_timeframe} candles")
        self._forming: dict[tuple[str, str], tuple[int, Event]] = {}

    def url(self) -> str:
        return self.settings.kraken_ws_url

    def subscribe_messages(self) -> list[Any]:
        return self._requests("subscribe", self.symbols)

    def resubscribe_messages(
        self, added: Sequence[str], removed: Sequence[str]
    ) -> list[Any] | None:
        out = self._requests("unsubscribe", removed) if removed else []
        return out + (self._requests("subscribe", added) if added else [])

    def symbols_removed(self, removed: Sequence[str]) -> None:
        super().symbols_removed(removed)
        gone = set(removed)
        self._forming = {k: v for k, v in self._forming.items() if k[0] not in gone}

    def _requests(self, method: str, symbols: Sequence[str]) -> list[Any]:
        pairs = [self.to_venue(s) for s in symbols]
        interval = MINUTES[self.settings.collector_timeframe]
        return [
            {"method": method, "params": {"channel": "trade", "symbol": pairs}},
            {
                "method": method,
                "params": {"channel": "ohlc", "symbol": pairs, "interval": interval},
            },
            {
                "method": method,
                "params": {"channel": "ticker", "symbol": pairs, "event_trigger": "bbo"},
            },
        ]

    @staticmethod
    def to_venue(symbol: str) -> str:
        return symbol.replace("-", "/")

    @staticmethod
    def from_venue(venue_symbol: str) -> str:
        base, sep, quote = venue_symbol.upper().partition("/")
        if not sep or not base or not quote:
            raise MalformedFrameError("unknown_symbol", venue_symbol)
        return f"{base}-{quote}"

    def parse(self, msg: Any, ts_recv: int) -> list[Event]:
        if not isinstance(msg, dict):
            raise MalformedFrameError("not_object", type(msg).__name__)
        if "method" in msg:  # acknowledgement of a request
            if msg.get("success") is False:
                raise MalformedFrameError("venue_error", repr(msg.get("error")))
            return []
        channel = msg.get("channel")
        if channel in _CONTROL:
            return []
        data = msg.get("data")
        if channel not in ("trade", "ohlc", "ticker"):
            raise MalformedFrameError("unknown_type", f"channel={channel!r}")
        if not isinstance(data, list):
            raise MalformedFrameError("bad_field", "data is not a list")
        if channel == "trade":
            return [self._trade(item, ts_recv) for item in data]
        if channel == "ticker":
            return [self._ticker(item, ts_recv) for item in data]
        out: list[Event] = []
        for item in data:
            out += self._ohlc(item, ts_recv)
        return out

    def _trade(self, t: Any, ts_recv: int) -> Event:
        side = text(t, "side")
        if side not in ("buy", "sell"):
            raise MalformedFrameError("bad_field", f"side={side!r}")
        trade_id = integer(t, "trade_id")
        return Event(
            Kind.TRADE,
            self.symbol_of(t.get("symbol")),
            {
                "ts_event": rfc3339_ns(text(t, "timestamp")),
                "ts_recv": ts_recv,
                "price": number(t, "price"),
                "size": number(t, "qty"),
                "side": int(Side.BUY if side == "buy" else Side.SELL),
                "trade_id": trade_id,
            },
            order=trade_id,
        )

    def _ticker(self, t: Any, ts_recv: int) -> Event:
        symbol = self.symbol_of(t.get("symbol"))
        ts_event = rfc3339_ns(text(t, "timestamp")) if "timestamp" in t else ts_recv
        return Event(
            Kind.QUOTE,
            symbol,
            {
                "ts_event": ts_event,
                "ts_recv": ts_recv,
                "bid_price": number(t, "bid"),
                "bid_size": number(t, "bid_qty"),
                "ask_price": number(t, "ask"),
                "ask_size": number(t, "ask_qty"),
            },
        )

    def _ohlc(self, c: Any, ts_recv: int) -> list[Event]:
        symbol = self.symbol_of(c.get("symbol") if isinstance(c, dict) else None)
        tf = INTERVALS.get(integer(c, "interval"))
        if tf is None:
            raise MalformedFrameError("bad_field", f"interval={c.get('interval')!r}")
        begin = rfc3339_ns(text(c, "interval_begin"))
        candle = Event(
            Kind.BAR,
            symbol,
            {
                "ts_event": begin,
                "ts_recv": ts_recv,
                "open": number(c, "open"),
                "high": number(c, "high"),
                "low": number(c, "low"),
                "close": number(c, "close"),
                "volume": number(c, "volume"),
                "trades": integer(c, "trades"),
                "vwap": number(c, "vwap"),
            },
            order=begin,
            timeframe=tf,
        )
        key = (symbol, tf)
        forming = self._forming.get(key)
        if forming is None or begin > forming[0]:
            self._forming[key] = (begin, candle)
            return [forming[1]] if forming is not None else []  # a later interval closes it
        if begin == forming[0]:
            self._forming[key] = (begin, candle)  # the forming candle, updated
            return []
        return [candle]  # an older, closed candle (snapshot order); replays are dropped
