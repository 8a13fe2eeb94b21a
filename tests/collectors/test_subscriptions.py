"""Symbols added and removed at runtime through the compacted control topic, no restart.

Real broker (the test's own namespace); the venues are local `TickingVenue` servers that
stream trades for whatever is subscribed and honour (un)subscribe requests like the venue.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schemas.batch import decode_batch
from schemas.events import Kind
from streams.kafka.admin import admin_client, end_offsets, read_range
from streams.settings import Settings
from streams.topics import SUBSCRIPTIONS_TOPIC
from streams.venues import COLLECTORS
from streams.venues.base import Collector
from streams.venues.oanda import OandaCollector
from streams.venues.subscriptions import (
    BadRecordError,
    ControlReader,
    Subscription,
    decode,
    effective_symbols,
    ensure_control_topic,
    follow,
    publish,
)
from tests.collectors.helpers import RecordingSink
from tests.collectors.servers import TickingVenue, serve
from tests.collectors.test_resilience import until
from tests.conftest import REPO

# per venue: kept default, default removed before start, added before start, added live
SYMBOLS = {
    "binance": ("BTC-USDT", "SOL-USDT", "ETH-USDT", "XRP-USDT"),
    "coinbase": ("BTC-USD", "SOL-USD", "ETH-USD", "XRP-USD"),
    "kraken": ("BTC-USD", "SOL-USD", "ETH-USD", "XRP-USD"),
    "oanda": ("EUR-USD", "GBP-USD", "USD-JPY", "AUD-USD"),
}


def sub(symbol: str, active: bool, venue: str = "binance") -> Subscription:
    return Subscription(venue, symbol, active, 1, "t@h")


def test_record_codec_and_the_merge_rule() -> None:
    rec = sub("BTC-USDT", True)
    assert rec.key == b"binance:BTC-USDT"
    assert decode(rec.key, rec.encode()) == rec
    bad = {
        b"not json": "bad_json",
        b'{"v": 2, "venue": "binance", "symbol": "BTC-USDT", "active": true, "ts": 1}': (
            "unknown_version"
        ),
        b'{"v": 1, "venue": "binance", "symbol": "ETH-USDT", "active": true, "ts": 1}': (
            "key_mismatch"
        ),
        b'{"v": 1, "venue": "binance", "symbol": "BTC-USDT", "active": "yes", "ts": 1}': (
            "bad_field"
        ),
        b"[1]": "not_object",
    }
    for value, reason in bad.items():
        with pytest.raises(BadRecordError) as err:
            decode(rec.key, value)
        assert err.value.reason == reason
    for key in (b"BTC-USDT", b"binance:btcusdt", b"Binance:BTC-USDT", None, b"\xff:x"):
        with pytest.raises(BadRecordError):
            decode(key, rec.encode())

    defaults = ["BTC-USDT", "SOL-USDT"]
    decisions = {"SOL-USDT": sub("SOL-USDT", False), "ETH-USDT": sub("ETH-USDT", True)}
    assert effective_symbols(defaults, decisions) == ["BTC-USDT", "ETH-USDT"]
    assert effective_symbols([], {"X-Y": sub("X-Y", False)}) == []

    reader = ControlReader(Settings(), "binance")
    assert reader.fold(rec.key, rec.encode())
    assert not reader.fold(b"kraken:BTC-USD", sub("BTC-USD", True, "kraken").encode())
    off = sub("SOL-USDT", False)
    assert reader.fold(off.key, off.encode())
    assert effective_symbols(defaults, reader.of_venue("binance")) == ["BTC-USDT"]
    assert reader.fold(off.key, None)  # a tombstone: SOL back to its default (collected)
    assert effective_symbols(defaults, reader.of_venue("binance")) == ["BTC-USDT", "SOL-USDT"]
    assert not reader.fold(b"binance:BTC-USDT", b"{garbage")
    assert reader.rejected == 1 and list(reader.of_venue("binance")) == ["BTC-USDT"]


async def test_control_topic_is_compacted(settings: Settings) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    name = await ensure_control_topic(settings)
    assert name == settings.topic(SUBSCRIPTIONS_TOPIC) and name.startswith(settings.namespace)
    async with admin_client(settings) as admin:
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    entries = {e[0]: e[1] for e in resp.resources[0][4]}
    assert entries["cleanup.policy"] == "compact"


def collector_for(venue: str, settings: Settings, port: int, symbols: list[str]) -> Collector:
    sink = RecordingSink()
    if venue == "oanda":
        run = settings.replace(oanda_stream_url=f"http://127.0.0.1:{port}")
        return OandaCollector(run, symbols, sink, token="tok", account="001-1")
    url = f"ws://127.0.0.1:{port}/v2"
    run = {
        "binance": settings.replace(binance_ws_url=url),
        "coinbase": settings.replace(coinbase_ws_url=url),
        "kraken": settings.replace(kraken_ws_url=url),
    }[venue]
    return COLLECTORS[venue](run, symbols, sink)


def trades(collector: Collector, symbol: str) -> list[int]:
    sink = collector.sink
    assert isinstance(sink, RecordingSink)
    kind = Kind.QUOTE if collector.venue == "oanda" else Kind.TRADE
    return [i for i, a in enumerate(sink.added) if a.kind is kind and a.symbol == symbol]


def gaps(collector: Collector) -> list[tuple[int, str, str | None]]:
    sink = collector.sink
    assert isinstance(sink, RecordingSink)
    return [(i, a.symbol, a.reason) for i, a in enumerate(sink.added) if a.kind is Kind.GAP]


@pytest.mark.parametrize("venue", ["binance", "coinbase", "kraken", "oanda"])
async def test_symbols_follow_the_control_topic_without_restart(
    settings: Settings, venue: str
) -> None:
    kept, dropped, added, live = SYMBOLS[venue]
    to_venue = COLLECTORS[venue].to_venue
    # decisions recorded before the collector starts: read back from the topic at start
    await publish(settings, venue, [dropped], active=False)
    await publish(settings, venue, [added], active=True)
    other = "kraken" if venue != "kraken" else "coinbase"
    await publish(settings, other, ["DOGE-USD"], active=True)  # another venue's: ignored
    topic = await ensure_control_topic(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:  # garbage on the control topic is counted and skipped, never fatal
        await producer.send_and_wait(topic, key=f"{venue}:{kept}".encode(), value=b"{oops")
    finally:
        await producer.stop()

    server = TickingVenue(venue)
    async with serve(server, server.routes()) as port:
        collector = collector_for(venue, settings, port, [kept, dropped])
        ready = asyncio.Event()
        follower = asyncio.create_task(
            follow(settings, venue, collector.symbols, collector.set_symbols, ready)
        )
        await asyncio.wait_for(ready.wait(), 20)  # the decisions made before the start
        assert collector.symbols == [kept, added]
        run = asyncio.create_task(collector.run())
        try:
            await until(
                lambda: len(trades(collector, added)) >= 3 and bool(trades(collector, kept))
            )
            assert to_venue(dropped) not in server.paths[0]

            await publish(settings, venue, [live], active=True)
            await publish(settings, venue, [kept], active=False)
            await until(
                lambda: (
                    len(trades(collector, live)) >= 3
                    and any(g[1:] == (kept, "unsubscribed") for g in gaps(collector))
                )
            )
            before = len(trades(collector, kept))
            await asyncio.sleep(server.lag_s + 0.3)  # the venue's in-flight frames arrive
            assert len(trades(collector, kept)) == before  # no event of `kept` any more
            assert len(trades(collector, added)) > 3  # the continuing symbol flows on
            assert not run.done()
        finally:
            collector.stop()
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        await asyncio.wait_for(run, 5)

    assert trades(collector, dropped) == []
    (gap_at,) = [i for i, s, r in gaps(collector) if (s, r) == (kept, "unsubscribed")]
    assert max(trades(collector, kept)) < gap_at < max(trades(collector, live))
    assert collector.stats.malformed == {}
    if venue == "oanda":  # instruments are in the URL: reconnected with the new list
        assert server.connections >= 2
        assert server.paths[-1].endswith(f"instruments={to_venue(added)},{to_venue(live)}")
        assert (added, "resubscribe") in [g[1:] for g in gaps(collector)]
        return
    assert server.connections == 1 and collector.stats.connects == 1  # the same connection
    assert not any(r == "resubscribe" for _, _, r in gaps(collector))
    assert collector.stats.unsubscribed > 0  # in-flight frames of `kept` were dropped
    live_requests = [doc for _, doc in server.requests][1 if venue == "coinbase" else 0 :]
    if venue == "kraken":
        live_requests = live_requests[3:]  # after the three initial subscriptions
    # the two decisions may arrive in one fetch or two: their order is not fixed
    if venue == "binance":
        assert sorted((d["method"], d["params"][0]) for d in live_requests) == [
            ("SUBSCRIBE", f"{to_venue(live).lower()}@trade"),
            ("UNSUBSCRIBE", f"{to_venue(kept).lower()}@trade"),
        ]
    elif venue == "coinbase":
        assert sorted((d["type"], d["product_ids"]) for d in live_requests) == [
            ("subscribe", [live]),
            ("unsubscribe", [kept]),
        ]
    else:
        assert sorted(
            (d["method"], d["params"]["channel"], d["params"]["symbol"]) for d in live_requests
        ) == sorted(
            [
                *(("subscribe", ch, [to_venue(live)]) for ch in ("trade", "ohlc", "ticker")),
                *(("unsubscribe", ch, [to_venue(kept)]) for ch in ("trade", "ohlc", "ticker")),
            ]
        )


async def run_cli(settings: Settings, *args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "streams.cli", *args, "--json"),
        cwd=REPO,
        env={**os.environ, **settings.to_env()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    doc: dict[str, Any] = orjson.loads(out)
    return doc


async def test_collect_process_follows_symbols_add_and_remove(
    settings: Settings, tmp_path: Path
) -> None:
    """`sepstream collect` keeps running while `sepstream symbols add|remove` change it."""
    server = TickingVenue("binance")
    log_path = tmp_path / "collect.log"
    async with serve(server, server.routes()) as port:
        run = settings.replace(binance_ws_url=f"ws://127.0.0.1:{port}", log_format="json")
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "streams.cli", "collect", "--venue", "binance"),
                *("--symbols", "BTC-USDT"),
                cwd=REPO,
                env={**os.environ, **run.to_env()},
                stdout=log,
                stderr=log,
            )
            try:
                await until(lambda: server.sent.get("BTCUSDT", 0) >= 5, 30)
                added = await run_cli(
                    run, "symbols", "add", "--venue", "binance", "--symbols", "ethusdt"
                )
                assert added["topic"] == settings.topic(SUBSCRIPTIONS_TOPIC)
                assert [(c["symbol"], c["active"]) for c in added["changes"]] == [
                    ("ETH-USDT", True)
                ]
                await until(lambda: server.sent.get("ETHUSDT", 0) >= 5, 30)
                await run_cli(
                    run, "symbols", "remove", "--venue", "binance", "--symbols", "BTC-USDT"
                )
                await until(lambda: "BTCUSDT" not in server.subscribed, 30)
                await asyncio.sleep(0.5)
                listed = await run_cli(run, "symbols", "list", "--venue", "binance")
            finally:
                proc.send_signal(signal.SIGTERM)
                rc = await asyncio.wait_for(proc.wait(), 30)
    output = log_path.read_text()
    assert rc == 0, output
    assert "Traceback" not in output
    assert output.count('"resubscribed on the open connection"') == 2, output
    assert server.connections == 1  # one process, one connection, all along
    assert [(d["symbol"], d["active"]) for d in listed["subscriptions"]] == [
        ("BTC-USDT", False),
        ("ETH-USDT", True),
    ]
    (unsubscribed_at,) = [t for t, d in server.requests if d["method"] == "UNSUBSCRIBE"]

    topic = settings.topic("md.trades.v1")
    seen: dict[str, list[int]] = {}
    last_btc_recv = 0
    async for _, value in read_range(settings, {}, await end_offsets(settings, [topic])):
        batch = decode_batch(value)
        if batch.kind is Kind.TRADE:
            seen.setdefault(batch.symbol, []).extend(batch.cols["trade_id"].tolist())
            if batch.symbol == "BTC-USDT":
                last_btc_recv = max(last_btc_recv, int(batch.cols["ts_recv"].max()))
    assert sorted(seen) == ["BTC-USDT", "ETH-USDT"]
    for ids in seen.values():
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # none lost, none twice
    assert last_btc_recv < unsubscribed_at  # nothing of BTC once it was unsubscribed


async def test_no_symbols_means_no_connection_until_one_is_added(settings: Settings) -> None:
    server = TickingVenue("coinbase")
    async with serve(server, server.routes()) as port:
        collector = collector_for("coinbase", settings, port, [])
        run = asyncio.create_task(collector.run())
        try:
            await asyncio.sleep(0.3)
            assert server.connections == 0 and collector.stats.connects == 0
            await collector.set_symbols(["BTC-USD"])
            await until(lambda: len(trades(collector, "BTC-USD")) >= 3)
            await collector.set_symbols([])  # the last one removed: the connection goes
            await until(lambda: collector.stats.connects == 1 and collector._ws is None)
            count = len(trades(collector, "BTC-USD"))
            await asyncio.sleep(0.3)
            assert len(trades(collector, "BTC-USD")) == count and not run.done()
        finally:
            collector.stop()
        await asyncio.wait_for(run, 2)  # stops promptly while idle
    assert server.connections == 1
    assert [r for _, _, r in gaps(collector)] == ["unsubscribed"]
