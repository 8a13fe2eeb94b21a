"""Benchmark of the collectors' per-frame path: venue messages/s parsed and normalized.

    python -m bench.collectors --frames 100000 --repeat 5 --json

What is timed is `Collector.handle_frame`, exactly what a running collector does with each
frame it receives: size check, `orjson.loads`, the venue parser (validation, symbol mapping,
side conversion, timestamps to ns), replay/sequence suppression, and the hand-off to the
sink. The sink here only counts, so Kafka and the batching producer are not in the figure;
neither is the network. Streams (one per row): Binance trade and closed 1m kline, Coinbase
match, Kraken trade and ohlc (updates of the forming candle, a bar each time a minute
closes), OANDA price. Each is the venue's fixture message (`tests/fixtures/venues/`,
documentation-shaped) replicated into a realistic stream: consecutive ids, moving prices
and times. Every repeat uses a fresh collector (no replay state carried over); figures are
medians. Logs go to stderr; `--json` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from schemas.events import Kind
from streams.ops.logs import configure_logging
from streams.settings import Settings
from streams.venues.base import Collector
from streams.venues.binance import BinanceCollector
from streams.venues.coinbase import CoinbaseCollector
from streams.venues.kraken import KrakenCollector
from streams.venues.oanda import OandaCollector

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "venues"
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00Z


class CountingSink:
    """The `EventSink` interface, counting events only: the producer is not benchmarked."""

    def __init__(self) -> None:
        self.events = 0

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
        self.events += 1


def fixture(venue: str, index: int) -> dict[str, Any]:
    doc = orjson.loads((FIXTURES / f"{venue}.json").read_bytes())
    frame: dict[str, Any] = copy.deepcopy(doc["frames"][index])
    return frame


def stamp(ms: int, digits: int = 6) -> str:
    base = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{(ms % 1000) * 10 ** (digits - 3):0{digits}d}Z"


def binance_trades(n: int) -> list[bytes]:
    tpl = fixture("binance", 0)
    out = []
    for i in range(n):
        d = tpl["data"]
        d.update(E=T0_MS + i * 7, T=T0_MS + i * 7 - 1, t=1_000_000 + i, m=i % 3 == 0)
        d["p"] = f"{42000 + (i * 37) % 500 / 100:.8f}"
        d["q"] = f"{0.001 + (i % 50) / 1000:.8f}"
        out.append(orjson.dumps(tpl))
    return out


def binance_klines(n: int) -> list[bytes]:
    tpl = fixture("binance", 4)  # a closed kline: each frame one bar
    out = []
    for i in range(n):
        k = tpl["data"]["k"]
        k.update(t=T0_MS + i * 60_000, T=T0_MS + i * 60_000 + 59_999, n=50 + i % 40)
        close = 42000 + (i * 13) % 300
        k.update(o=f"{close - 1:.8f}", h=f"{close + 5:.8f}", l=f"{close - 6:.8f}")
        k["c"] = f"{close:.8f}"
        tpl["data"]["E"] = T0_MS + (i + 1) * 60_000
        out.append(orjson.dumps(tpl))
    return out


def coinbase_matches(n: int) -> list[bytes]:
    tpl = fixture("coinbase", 2)
    out = []
    for i in range(n):
        tpl.update(trade_id=572_000_000 + i, sequence=71_000_000_000 + 3 * i)
        tpl.update(price=f"{42000 + (i * 29) % 700 / 100:.2f}", side="buy" if i % 2 else "sell")
        tpl["time"] = stamp(T0_MS + i * 5)
        out.append(orjson.dumps(tpl))
    return out


def kraken_trades(n: int) -> list[bytes]:
    tpl = fixture("kraken", 3)
    item = tpl["data"][0]
    tpl["data"] = [item]
    out = []
    for i in range(n):
        item.update(trade_id=68_000_000 + i, price=42000.0 + (i * 17) % 900 / 10)
        item.update(side="buy" if i % 2 else "sell", timestamp=stamp(T0_MS + i * 9))
        out.append(orjson.dumps(tpl))
    return out


def kraken_ohlc(n: int, updates_per_minute: int = 20) -> list[bytes]:
    tpl = fixture("kraken", 4)
    c = tpl["data"][0]
    out = []
    for i in range(n):
        minute = i // updates_per_minute
        close = 42000.0 + (i * 11) % 400 / 10
        c.update(open=42000.0, high=42100.0, low=41900.0, close=close, trades=1 + i % 50)
        c["interval_begin"] = stamp(T0_MS + minute * 60_000, 9)
        c["timestamp"] = stamp(T0_MS + minute * 60_000 + 1000 + i % updates_per_minute)
        out.append(orjson.dumps(tpl))
    return out


def oanda_prices(n: int) -> list[bytes]:
    tpl = fixture("oanda", 0)
    out = []
    for i in range(n):
        bid = 1.10 + (i * 7) % 300 / 100_000
        tpl["time"] = stamp(T0_MS + i * 3, 9)
        tpl["bids"][0]["price"] = f"{bid:.5f}"
        tpl["asks"][0]["price"] = f"{bid + 0.00012:.5f}"
        out.append(orjson.dumps(tpl))
    return out


@dataclass(frozen=True)
class Stream:
    name: str
    make_collector: Callable[[CountingSink], Collector]
    frames: Callable[[int], list[bytes]]


def streams(settings: Settings) -> list[Stream]:
    return [
        Stream(
            "binance trade",
            lambda s: BinanceCollector(settings, ["BTC-USDT", "ETH-USDT"], s),
            binance_trades,
        ),
        Stream(
            "binance kline 1m",
            lambda s: BinanceCollector(settings, ["BTC-USDT"], s),
            binance_klines,
        ),
        Stream(
            "coinbase match",
            lambda s: CoinbaseCollector(settings, ["BTC-USD"], s),
            coinbase_matches,
        ),
        Stream("kraken trade", lambda s: KrakenCollector(settings, ["BTC-USD"], s), kraken_trades),
        Stream("kraken ohlc", lambda s: KrakenCollector(settings, ["BTC-USD"], s), kraken_ohlc),
        Stream(
            "oanda price",
            lambda s: OandaCollector(settings, ["EUR-USD"], s, token="t", account="001-1"),
            oanda_prices,
        ),
    ]


async def run_once(stream: Stream, frames: list[bytes]) -> tuple[float, int, Collector]:
    sink = CountingSink()
    collector = stream.make_collector(sink)
    handle = collector.handle_frame
    started = time.perf_counter()
    for raw in frames:
        await handle(raw)
    return time.perf_counter() - started, sink.events, collector


async def bench(n_frames: int, repeat: int, only: set[str] | None) -> list[dict[str, Any]]:
    settings = Settings()
    results = []
    for stream in streams(settings):
        if only and stream.name.split()[0] not in only:
            continue
        frames = stream.frames(n_frames)
        await run_once(stream, frames[: min(2000, n_frames)])  # warm-up, untimed
        times, events = [], 0
        for _ in range(repeat):
            seconds, events, collector = await run_once(stream, frames)
            assert not collector.stats.malformed, collector.stats.malformed
            assert collector.stats.replays == 0
            times.append(seconds)
        median = statistics.median(times)
        results.append(
            {
                "stream": stream.name,
                "frames": n_frames,
                "events_per_run": events,
                "msgs_per_s": round(n_frames / median),
                "events_per_s": round(events / median),
                "us_per_msg": round(median / n_frames * 1e6, 3),
                "seconds_median": round(median, 4),
                "seconds_all": [round(t, 4) for t in times],
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="Messages per stream.")
    parser.add_argument("--repeat", type=int, default=5, help="Timed runs per stream.")
    parser.add_argument("--venues", default="", help="Only these venues (comma-separated).")
    parser.add_argument("--json", action="store_true", help="Print one JSON document.")
    args = parser.parse_args()
    # parse warnings would be per-frame noise; none are expected (asserted above)
    configure_logging("warning", "console")
    only = {v.strip() for v in args.venues.split(",") if v.strip()} or None
    results = asyncio.run(bench(args.frames, args.repeat, only))
    doc = {
        "benchmark": "collectors parse+normalize (Collector.handle_frame, counting sink)",
        "frames": args.frames,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "orjson": orjson.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "results": results,
    }
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    for r in results:
        sys.stdout.write(
            f"{r['stream']:<18} {r['msgs_per_s']:>10,} msgs/s {r['events_per_s']:>10,} events/s"
            f" {r['us_per_msg']:>8.2f} µs/msg\n"
        )


if __name__ == "__main__":
    main()
