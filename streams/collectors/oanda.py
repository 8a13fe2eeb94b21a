"""OANDA v20 pricing stream: best bid/ask quotes over HTTP chunked JSON lines.

Follows OANDA's v20 REST "Pricing Endpoints" documentation
(`GET /v3/accounts/{accountID}/pricing/stream?instruments=EUR_USD,...`): one JSON object per
line, `PRICE` (bids/asks ladders, RFC 3339 time with ns) or `HEARTBEAT` (every ~5 s, which
keeps the stale-feed timer quiet on a silent market). The token is a secret: it comes from
`SEPSTREAM_OANDA_TOKEN` (never from settings, never logged); the account from
`SEPSTREAM_OANDA_ACCOUNT`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from schemas.events import Kind
from streams.collectors.base import Collector, Event, MalformedFrameError, number, rfc3339_ns, text
from streams.settings import Settings
from streams.sources.synthetic import EventSink


class OandaCollector(Collector):
    venue = "oanda"
    transport = "http_lines"

    def __init__(
        self,
        settings: Settings,
        symbols: Sequence[str],
        sink: EventSink,
        *,
        token: str | None = None,
        account: str | None = None,
    ) -> None:
        super().__init__(settings, symbols, sink)
        token = token or os.environ.get("SEPSTREAM_OANDA_TOKEN", "")
        account = account or os.environ.get("SEPSTREAM_OANDA_ACCOUNT", "")
        if not token or not account:
            raise ValueError("oanda needs SEPSTREAM_OANDA_TOKEN and SEPSTREAM_OANDA_ACCOUNT")
        self._token = token
        self._account = account

    def url(self) -> str:
        instruments = ",".join(self.to_venue(s) for s in self.symbols)
        base = self.settings.oanda_stream_url.rstrip("/")
        return (
            f"{base}/v3/accounts/{quote(self._account, safe='')}/pricing/stream"
            f"?instruments={instruments}"
        )

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token}",
            "Accept-Datetime-Format": "RFC3339",
        }

    @staticmethod
    def to_venue(symbol: str) -> str:
        return symbol.replace("-", "_")

    @staticmethod
    def from_venue(venue_symbol: str) -> str:
        base, sep, quote_ccy = venue_symbol.upper().partition("_")
        if not sep or not base or not quote_ccy:
            raise MalformedFrameError("unknown_symbol", venue_symbol)
        return f"{base}-{quote_ccy}"

    def parse(self, msg: Any, ts_recv: int) -> list[Event]:
        if not isinstance(msg, dict):
            raise MalformedFrameError("not_object", type(msg).__name__)
        kind = msg.get("type")
        if kind == "HEARTBEAT":
            return []
        if kind != "PRICE":
            raise MalformedFrameError("unknown_type", f"type={kind!r}")
        symbol = self.symbol_of(msg.get("instrument"))
        bids, asks = msg.get("bids"), msg.get("asks")
        if not isinstance(bids, list) or not isinstance(asks, list) or not bids or not asks:
            raise MalformedFrameError("bad_field", "bids/asks must be non-empty lists")
        ts_event = rfc3339_ns(text(msg, "time"))
        return [
            Event(
                Kind.QUOTE,
                symbol,
                {
                    "ts_event": ts_event,
                    "ts_recv": ts_recv,
                    "bid_price": number(bids[0], "price"),
                    "bid_size": number(bids[0], "liquidity"),
                    "ask_price": number(asks[0], "price"),
                    "ask_size": number(asks[0], "liquidity"),
                },
                # a reconnect re-sends the current price: same time, a replay
                order=ts_event,
            )
        ]
