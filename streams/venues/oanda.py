"""OANDA v20 pricing stream: best bid/ask quotes over HTTP chunked JSON lines.

Follows OANDA's v20 REST "Pricing Endpoints" documentation
(`GET /v3/accounts/{accountID}/pricing/stream?instruments=EUR_USD,...`): one JSON object per
line, `PRICE` (bids/asks ladders, RFC 3339 time with ns) or `HEARTBEAT` (every ~5 s, which
keeps the stale-feed timer quiet on a silent market). The token is a secret: it comes from
`SEPSTREAM_OANDA_TOKEN` (never from settings, never logged); the account from
`SEPSTREAM_OANDA_ACCOUNT`. The instruments are part of the URL, so a change of symbols at
runtime reconnects with the new list (the base's default). `OandaCandles` is the REST
history for the backfill (v20 "Instrument Endpoints", `GET /v3/instruments/{instrument}/
candles`), with the same token.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog

from schemas.events import Kind
from streams.settings import Settings
from streams.sources.synthetic import EventSink
from streams.venues.base import Collector, Event, MalformedFrameError, number, rfc3339_ns, text
from streams.venues.history import MINUTE_MS, MinuteBar, PacedClient, keep_sane

log = structlog.get_logger(__name__)


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
        token = token or settings.oanda_token
        account = account or settings.oanda_account
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


class OandaCandles:
    """Closed M1 mid-price candles from `GET /v3/instruments/{instrument}/candles`.

    A request names `from` and `to` (so no `count`: the documentation forbids both) and
    covers at most `page` minutes, the documented maximum of 5000 candles per answer.
    Minutes without a price (markets closed, a quiet minute) have no candle. `volume` is
    OANDA's tick volume (prices in the minute), the only volume an FX venue reports;
    `trades` is 0 and `vwap` unknown: an FX venue has no trades.
    """

    venue = "oanda"
    page = 5000

    def __init__(
        self, settings: Settings, session: aiohttp.ClientSession, *, token: str | None = None
    ) -> None:
        token = token or settings.oanda_token
        if not token:
            raise ValueError("oanda needs SEPSTREAM_OANDA_TOKEN")
        self.settings = settings
        headers = {"Authorization": f"Bearer {token}", "Accept-Datetime-Format": "RFC3339"}
        self.client = PacedClient(settings, session, "oanda candles", headers)

    @property
    def requests(self) -> int:
        return self.client.requests

    async def fetch(self, symbol: str, first_ms: int, last_ms: int) -> list[MinuteBar]:
        instrument = quote(OandaCollector.to_venue(symbol), safe="")
        url = f"{self.settings.oanda_rest_url.rstrip('/')}/v3/instruments/{instrument}/candles"
        out: list[MinuteBar] = []
        for lo in range(first_ms, last_ms + 1, self.page * MINUTE_MS):
            hi = min(last_ms, lo + (self.page - 1) * MINUTE_MS)
            params = {
                "granularity": "M1",
                "price": "M",
                "from": _rfc3339(lo),
                "to": _rfc3339(hi + MINUTE_MS - 1000),  # inside the last wanted minute
            }
            doc = await self.client.get_json(url, params)
            candles = doc.get("candles") if isinstance(doc, dict) else None
            if not isinstance(candles, list):
                raise RuntimeError(f"candles answer without candles: {str(doc)[:200]}")
            for candle in candles:
                bar = _candle_bar(candle)
                if bar is not None and lo <= bar.ms <= hi:
                    out.append(bar)
        return keep_sane(out, "oanda candles")


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _candle_bar(c: Any) -> MinuteBar | None:
    """A complete candle as a bar; None for the forming one, or (logged) a malformed one."""
    try:
        if c.get("complete") is not True:
            return None
        ns = rfc3339_ns(text(c, "time"))
        volume = c.get("volume")
        mid = c.get("mid")
        if ns % (MINUTE_MS * 1_000_000) or isinstance(volume, bool) or not isinstance(volume, int):
            raise MalformedFrameError("bad_field", f"time/volume {c.get('time')!r} {volume!r}")
        return MinuteBar(
            ms=ns // 1_000_000,
            open=number(mid, "o"),
            high=number(mid, "h"),
            low=number(mid, "l"),
            close=number(mid, "c"),
            volume=float(volume),
            trades=0,
        )
    except (MalformedFrameError, AttributeError) as exc:
        log.warning("candle skipped", error=str(exc), candle=str(c)[:200])
        return None
