"""Venue collectors (docs/ARCHITECTURE.md#sources): one process per venue, normalized events to
md.trades.v1.

`sepstream collect --venue binance --symbols BTC-USDT,ETH-USDT` runs one; SIGINT/SIGTERM stop
it after a flush. The symbols are merged with the compacted `md.control.subscriptions` topic
at start and follow it while running (`streams.venues.subscriptions`; `sepstream symbols
add|remove|list`): no restart to add or drop a symbol. Endpoints, timeframe, heartbeat,
staleness, backoff and the frame size limit are `SEPSTREAM_COLLECTOR_*` /
`SEPSTREAM_<VENUE>_*_URL` settings. With
`SEPSTREAM_COLLECTOR_METRICS_PORT` set, the process serves Prometheus metrics:
`sepstream_collector_malformed_frames_total{venue,reason}`, `..._reconnects_total{venue,cause}`,
`..._gaps_total{venue,reason}`, `..._events_total{venue,kind}`,
`..._replays_dropped_total{venue}`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Sequence
from typing import Final

import structlog
from prometheus_client import start_http_server

from schemas.events import SYMBOL_RE
from streams.kafka.admin import ensure_topics
from streams.kafka.producer import BatchingProducer
from streams.settings import Settings
from streams.topics import hot_topics
from streams.venues.base import Collector
from streams.venues.binance import BinanceCollector
from streams.venues.coinbase import CoinbaseCollector
from streams.venues.kraken import KrakenCollector
from streams.venues.oanda import OandaCollector
from streams.venues.subscriptions import follow

log = structlog.get_logger(__name__)

COLLECTORS: Final[dict[str, type[Collector]]] = {
    "binance": BinanceCollector,
    "coinbase": CoinbaseCollector,
    "kraken": KrakenCollector,
    "oanda": OandaCollector,
}


def normalize_symbols(venue: str, symbols: Sequence[str]) -> list[str]:
    """Accept `BTC-USDT` or the venue's own spelling (`BTCUSDT`, `BTC/USD`, `EUR_USD`)."""

    cls = COLLECTORS[venue]
    out = []
    for raw in symbols:
        s = raw.strip()
        if not s:
            continue
        out.append(s.upper() if SYMBOL_RE.match(s.upper()) else cls.from_venue(s))
    return out


async def run_collector(settings: Settings, venue: str, symbols: Sequence[str]) -> Collector:
    """Run one collector into the namespace's trades topic until SIGINT/SIGTERM.

    `symbols` are the defaults; the control topic's decisions are applied on top of them
    before the first connection (waiting at most `collector_control_wait_s` for the topic)
    and whenever a new one arrives.
    """

    topic = hot_topics(settings)["trades"]
    producer = BatchingProducer(settings, topic)
    # built first: bad symbols or missing credentials fail before anything connects
    collector = COLLECTORS[venue](settings, symbols, producer)
    await ensure_topics(settings)
    if settings.collector_metrics_port > 0:
        start_http_server(settings.collector_metrics_port, addr=settings.web_host)
    loop = asyncio.get_running_loop()
    async with producer:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, collector.stop)
        ready = asyncio.Event()
        follower = asyncio.create_task(
            follow(settings, venue, collector.symbols, collector.set_symbols, ready),
            name="subscriptions",
        )
        try:
            if not await _first(
                ready.wait(), collector.wait_stop(), settings.collector_control_wait_s
            ):
                log.warning(
                    "control topic not read, starting with the given symbols",
                    wait_s=settings.collector_control_wait_s,
                )
            log.info("collecting", venue=venue, symbols=collector.symbols, topic=topic)
            await collector.run()
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    log.info("collector finished", venue=venue, events_sent=producer.events_sent)
    return collector


async def _first(wanted: Awaitable[object], other: Awaitable[object], timeout_s: float) -> bool:
    """Wait for `wanted` until `other` completes or the time is up; True if `wanted` did."""
    first, second = asyncio.ensure_future(wanted), asyncio.ensure_future(other)
    try:
        await asyncio.wait({first, second}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        return first.done()
    finally:
        for task in (first, second):
            task.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
