"""Coinbase Exchange: trades from the `matches` channel, best bid/ask from `ticker`.

Follows the Coinbase Exchange "WebSocket Feed" / "Channels" documentation
(ws-feed.exchange.coinbase.com). A match's `side` is the MAKER order's side, so the aggressor
is the opposite. `trade_id` is consecutive per product; `last_match` (sent on subscribing)
has the match shape and is a replay when we already have it. Symbols added or removed at
runtime are sent as `subscribe` / `unsubscribe` messages on the open connection.
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

_CONTROL = frozenset({"subscriptions", "heartbeat"})
CHANNELS: Final = ("matches", "ticker", "heartbeat")


class CoinbaseCollector(Collector):
    venue = "coinbase"

    def url(self) -> str:
        return self.settings.coinbase_ws_url

    def subscribe_messages(self) -> list[Any]:
        return [self._request("subscribe", self.symbols)]

    def resubscribe_messages(
        self, added: Sequence[str], removed: Sequence[str]
    ) -> list[Any] | None:
        out = [self._request("unsubscribe", removed)] if removed else []
        return out + ([self._request("subscribe", added)] if added else [])

    def _request(self, kind: str, symbols: Sequence[str]) -> dict[str, Any]:
        return {
            "type": kind,
            "product_ids": [self.to_venue(s) for s in symbols],
            "channels": list(CHANNELS),
        }

    @staticmethod
    def to_venue(symbol: str) -> str:
        return symbol

    @staticmethod
    def from_venue(venue_symbol: str) -> str:
        return venue_symbol.upper()

    def parse(self, msg: Any, ts_recv: int) -> list[Event]:
        if not isinstance(msg, dict):
            raise MalformedFrameError("not_object", type(msg).__name__)
        kind = msg.get("type")
        if kind in ("match", "last_match"):
            return [self._match(msg, ts_recv)]
        if kind == "ticker":
            return [self._ticker(msg, ts_recv)]
        if kind in _CONTROL:
            return []
        if kind == "error":
            raise MalformedFrameError(
                "venue_error", f"{msg.get('message')!r} {msg.get('reason')!r}"
            )
        raise MalformedFrameError("unknown_type", f"type={kind!r}")

    def _match(self, m: dict[str, Any], ts_recv: int) -> Event:
        maker_side = m.get("side")
        if maker_side not in ("buy", "sell"):
            raise MalformedFrameError("bad_field", f"side={maker_side!r}")
        trade_id = integer(m, "trade_id")
        return Event(
            Kind.TRADE,
            self.symbol_of(m.get("product_id")),
            {
                "ts_event": rfc3339_ns(text(m, "time")),
                "ts_recv": ts_recv,
                "price": number(m, "price"),
                "size": number(m, "size"),
                "side": int(Side.BUY if maker_side == "sell" else Side.SELL),
                "trade_id": trade_id,
                "seq": integer(m, "sequence"),
            },
            order=trade_id,
            contiguous=True,
        )

    def _ticker(self, t: dict[str, Any], ts_recv: int) -> Event:
        seq = integer(t, "sequence")
        return Event(
            Kind.QUOTE,
            self.symbol_of(t.get("product_id")),
            {
                "ts_event": rfc3339_ns(text(t, "time")),
                "ts_recv": ts_recv,
                "bid_price": number(t, "best_bid"),
                "bid_size": number(t, "best_bid_size"),
                "ask_price": number(t, "best_ask"),
                "ask_size": number(t, "best_ask_size"),
                "seq": seq,
            },
            order=seq,
        )
