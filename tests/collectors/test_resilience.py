"""Collectors against local venue stand-ins: drops, replays, garbage, silence.

The server replays documentation-shaped frames, kills the connection mid-stream, re-sends
what the collector already has (as venues do after a reconnect), sends malformed and
oversized frames and then goes silent. The collector must reconnect, mark every outage and
sequence jump with a gap event, never emit an event twice, count the garbage by venue and
reason, and never crash.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import orjson
from aiohttp import web

from schemas.events import Kind, Side
from streams.settings import Settings
from streams.venues.base import Collector
from streams.venues.binance import BinanceCollector
from streams.venues.kraken import KrakenCollector
from streams.venues.oanda import OandaCollector
from tests.collectors.helpers import RecordingSink, frames, malformed_count
from tests.collectors.servers import ScriptedServer, Step, serve

FAST = Settings().replace(
    collector_stale_after_s=1.5,
    collector_heartbeat_s=0.5,  # pings answered by a silent server must not hide staleness
    collector_backoff_initial_s=0.02,
    collector_backoff_max_s=0.1,
    collector_max_frame_bytes=4096,
)


def dumps(doc: Any) -> str:
    return orjson.dumps(doc).decode()


def binance_trade(symbol: str, trade_id: int, *, maker_buys: bool = True) -> Step:
    frame = copy.deepcopy(frames("binance")[0])
    frame["stream"] = f"{symbol.lower()}@trade"
    data = frame["data"]
    data.update(s=symbol, t=trade_id, T=1_704_067_200_000 + trade_id, m=maker_buys)
    data["p"] = f"{42000 + trade_id}.5"
    return ("send", dumps(frame))


async def until(check: Any, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def run_until(collector: Collector, check: Any, within: float = 20.0) -> None:
    task = asyncio.create_task(collector.run())
    try:
        await until(lambda: check() or task.done(), within)
        assert not task.done(), f"collector ended on its own: {task}"
    finally:
        collector.stop()
        await asyncio.wait_for(task, 5.0)  # a clean stop, no exception


async def test_binance_survives_drops_replays_garbage_and_silence() -> None:
    closed_kline = ("send", dumps(frames("binance")[4]))
    first: list[Step] = [
        *(binance_trade("BTCUSDT", i) for i in range(1, 6)),
        binance_trade("ETHUSDT", 100, maker_buys=False),
        closed_kline,
        ("drop", None),  # mid-stream, no close frame
    ]
    second: list[Step] = [
        *(binance_trade("BTCUSDT", i) for i in (3, 4, 5)),  # replays of what we have
        closed_kline,  # replayed bar
        binance_trade("BTCUSDT", 6),
        ("send", "{not json"),
        ("send", dumps({"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT"}})),
        ("send", dumps({"stream": "btcusdt@depth", "data": {"e": "depthUpdate"}})),
        ("send", "[1, 2, 3]"),
        ("send", dumps({"stream": "x", "data": {"e": "trade", "pad": "x" * 10_000}})),
        binance_trade("XRPUSDT", 1),
        binance_trade("BTCUSDT", 7),
        binance_trade("BTCUSDT", 9),  # 8 never came: a sequence gap
        ("silent", None),  # open, answering pings, sending nothing: stale
    ]
    third: list[Step] = [
        binance_trade("BTCUSDT", 9),
        binance_trade("BTCUSDT", 10),
        ("silent", None),
    ]
    server = ScriptedServer([first, second, third])
    reasons = ("bad_json", "bad_field", "unknown_type", "not_object", "oversized", "unknown_symbol")
    before = {r: malformed_count("binance", r) for r in reasons}
    sink = RecordingSink()
    async with serve(server, [web.get("/stream", server.websocket)]) as port:
        settings = FAST.replace(binance_ws_url=f"ws://127.0.0.1:{port}")
        collector = BinanceCollector(settings, ["BTC-USDT", "ETH-USDT"], sink)
        await run_until(collector, lambda: 10 in sink.trade_ids("BTC-USDT"))

    assert server.connections == 3 and collector.stats.connects == 3
    assert server.paths[0] == (
        "/stream?streams=btcusdt@trade/btcusdt@kline_1m/btcusdt@bookTicker/"
        "ethusdt@trade/ethusdt@kline_1m/ethusdt@bookTicker"
    )
    # every event once, in order, replays dropped
    assert sink.trade_ids("BTC-USDT") == [1, 2, 3, 4, 5, 6, 7, 9, 10]
    assert sink.trade_ids("ETH-USDT") == [100]
    assert len(sink.of(Kind.BAR)) == 1 and collector.stats.replays == 5
    first_trade = sink.of(Kind.TRADE, "BTC-USDT")[0]
    assert first_trade.venue == "binance" and first_trade.col("side") == Side.SELL
    assert first_trade.col("ts_event") == 1_704_067_200_001_000_000
    assert first_trade.col("ts_recv") > first_trade.col("ts_event")
    # two outages (drop, stale) x two symbols, and one sequence gap on BTC
    gaps = [(a.symbol, a.reason) for a in sink.of(Kind.GAP)]
    assert sorted(gaps) == sorted(
        [("BTC-USDT", "reconnect"), ("ETH-USDT", "reconnect")] * 2 + [("BTC-USDT", "sequence_gap")]
    )
    order = [
        (a.kind, a.col("trade_id") if a.kind is Kind.TRADE else a.reason)
        for a in sink.added
        if a.symbol == "BTC-USDT" and a.kind in (Kind.TRADE, Kind.GAP)
    ]
    assert order.index((Kind.GAP, "reconnect")) == 5  # right after trade 5, before trade 6
    assert order[order.index((Kind.TRADE, 9)) - 1] == (Kind.GAP, "sequence_gap")
    for gap in sink.of(Kind.GAP):
        assert set(gap.columns) == {"ts_event", "ts_recv"}
    # garbage counted by venue and reason, per instance and in Prometheus
    assert dict(collector.stats.malformed) == dict.fromkeys(reasons, 1)
    for reason in reasons:
        assert malformed_count("binance", reason) == before[reason] + 1
    assert sink.flushes == 1  # stopping flushes the sink


def kraken_trade(trade_id: int) -> dict[str, Any]:
    return {
        "symbol": "BTC/USD",
        "side": "buy" if trade_id % 2 else "sell",
        "price": 42000.0 + trade_id,
        "qty": 0.1,
        "ord_type": "market",
        "trade_id": trade_id,
        "timestamp": f"2024-01-01T00:00:{trade_id:02d}.000000Z",
    }


def kraken_candle(minute: int, close: float) -> dict[str, Any]:
    return {
        "symbol": "BTC/USD",
        "open": 42000.0,
        "high": 42100.0,
        "low": 41900.0,
        "close": close,
        "trades": 3,
        "volume": 1.5,
        "vwap": 42010.0,
        "interval_begin": f"2024-01-01T00:{minute:02d}:00.000000000Z",
        "interval": 1,
        "timestamp": f"2024-01-01T00:{minute + 1:02d}:00.000000Z",
    }


def kraken(channel: str, kind: str, data: list[dict[str, Any]]) -> Step:
    return ("send", dumps({"channel": channel, "type": kind, "data": data}))


async def test_kraken_snapshot_replays_after_reconnect_are_dropped() -> None:
    ack = ("send", dumps(frames("kraken")[0]))
    first: list[Step] = [
        ack,
        kraken("trade", "snapshot", [kraken_trade(i) for i in (1, 2, 3)]),
        kraken("ohlc", "snapshot", [kraken_candle(0, 42001.0)]),
        kraken("ohlc", "update", [kraken_candle(0, 42002.0)]),
        kraken("ohlc", "update", [kraken_candle(1, 42003.0)]),  # closes minute 0
        ("end", None),  # a clean close this time
    ]
    second: list[Step] = [
        ack,
        kraken("trade", "snapshot", [kraken_trade(i) for i in (2, 3, 4)]),
        kraken("ohlc", "snapshot", [kraken_candle(0, 42002.0), kraken_candle(1, 42004.0)]),
        kraken("ohlc", "update", [kraken_candle(2, 42005.0)]),  # closes minute 1
        ("send", dumps({"channel": "book", "type": "update", "data": []})),
        ("send", b"\xff\xfe binary garbage"),
        ("silent", None),
    ]
    third: list[Step] = [ack, kraken("trade", "update", [kraken_trade(5)]), ("silent", None)]
    server = ScriptedServer([first, second, third], expect_from_client=3)
    sink = RecordingSink()
    async with serve(server, [web.get("/v2", server.websocket)]) as port:
        settings = FAST.replace(kraken_ws_url=f"ws://127.0.0.1:{port}/v2")
        collector = KrakenCollector(settings, ["BTC-USD"], sink)
        await run_until(collector, lambda: 5 in sink.trade_ids("BTC-USD"))

    assert server.connections == 3
    for received in server.received:  # every connection subscribes again
        channels = [orjson.loads(m)["params"]["channel"] for m in received]
        assert channels == ["trade", "ohlc", "ticker"]
    assert sink.trade_ids("BTC-USD") == [1, 2, 3, 4, 5]
    sides = [a.col("side") for a in sink.of(Kind.TRADE)]
    assert sides == [Side.BUY, Side.SELL, Side.BUY, Side.SELL, Side.BUY]
    bars = [(a.col("ts_event"), a.col("close")) for a in sink.of(Kind.BAR)]
    assert bars == [(1_704_067_200_000_000_000, 42002.0), (1_704_067_260_000_000_000, 42004.0)]
    assert [a.reason for a in sink.of(Kind.GAP)] == ["reconnect", "reconnect"]
    assert dict(collector.stats.malformed) == {"unknown_type": 1, "bad_json": 1}


def oanda_line(instrument: str, second: int, bid: str) -> bytes:
    doc = copy.deepcopy(frames("oanda")[0])
    doc.update(instrument=instrument, time=f"2024-01-02T08:00:{second:02d}.000000001Z")
    doc["bids"][0]["price"] = bid
    return orjson.dumps(doc) + b"\n"


async def test_oanda_line_stream_reconnects_without_duplicates() -> None:
    heartbeat = orjson.dumps(frames("oanda")[1]) + b"\n"
    split = oanda_line("EUR_USD", 2, "1.10300")
    first: list[Step] = [
        ("send", oanda_line("EUR_USD", 1, "1.10200")),
        ("send", heartbeat),
        ("send", split[:40]),  # one line in two chunks
        ("send", split[40:]),
        ("send", b"{broken\n"),
        ("send", b'{"type": "PRICE", "pad": "' + b"x" * 9000 + b'"}\n'),  # oversized line
        ("end", None),
    ]
    second: list[Step] = [
        ("send", oanda_line("EUR_USD", 2, "1.10300")),  # the current price again: a replay
        ("send", oanda_line("EUR_USD", 3, "1.10400")),
        ("silent", None),  # no line, no heartbeat: stale
    ]
    third: list[Step] = [("send", oanda_line("EUR_USD", 4, "1.10500")), ("silent", None)]
    server = ScriptedServer([first, second, third])
    sink = RecordingSink()
    path = "/v3/accounts/{account}/pricing/stream"
    async with serve(server, [web.get(path, server.lines)]) as port:
        settings = FAST.replace(oanda_stream_url=f"http://127.0.0.1:{port}")
        collector = OandaCollector(settings, ["EUR-USD"], sink, token="tok", account="001-2")
        await run_until(collector, lambda: len(sink.of(Kind.QUOTE)) >= 4)

    assert server.paths[0] == "/v3/accounts/001-2/pricing/stream?instruments=EUR_USD"
    assert server.headers[0]["Authorization"] == "Bearer tok"
    bids = [a.col("bid_price") for a in sink.of(Kind.QUOTE)]
    assert bids == [1.102, 1.103, 1.104, 1.105]
    assert sink.of(Kind.QUOTE)[0].col("ts_event") == 1_704_182_401_000_000_001
    assert [a.reason for a in sink.of(Kind.GAP)] == ["reconnect", "reconnect"]
    assert server.connections == 3
    assert dict(collector.stats.malformed) == {"bad_json": 1, "oversized": 1}


async def test_stop_is_prompt_while_a_connect_hangs() -> None:
    """A venue that accepts TCP but never answers the handshake must not delay SIGTERM."""
    accepted: list[asyncio.StreamWriter] = []

    async def mute(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    tcp = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    settings = FAST.replace(
        binance_ws_url=f"ws://127.0.0.1:{port}", collector_connect_timeout_s=30.0
    )
    sink = RecordingSink()
    collector = BinanceCollector(settings, ["BTC-USDT"], sink)
    task = asyncio.create_task(collector.run())
    try:
        await until(lambda: bool(accepted))
        await asyncio.sleep(0.1)
        started = asyncio.get_running_loop().time()
        collector.stop()
        await asyncio.wait_for(task, 5.0)
        assert asyncio.get_running_loop().time() - started < 1.0
    finally:
        for writer in accepted:
            writer.close()
        tcp.close()
        await tcp.wait_closed()
    assert sink.added == [] and sink.flushes == 1 and collector.stats.connects == 0


async def test_frame_beyond_the_transport_limit_reconnects_and_is_counted() -> None:
    huge = ("send", "x" * (16 * FAST.collector_max_frame_bytes + 1))
    first: list[Step] = [binance_trade("BTCUSDT", 1), huge, ("silent", None)]
    second: list[Step] = [binance_trade("BTCUSDT", 2), ("silent", None)]
    server = ScriptedServer([first, second])
    sink = RecordingSink()
    async with serve(server, [web.get("/stream", server.websocket)]) as port:
        settings = FAST.replace(binance_ws_url=f"ws://127.0.0.1:{port}")
        collector = BinanceCollector(settings, ["BTC-USDT"], sink)
        await run_until(collector, lambda: 2 in sink.trade_ids("BTC-USDT"))
    assert sink.trade_ids("BTC-USDT") == [1, 2]
    assert dict(collector.stats.malformed) == {"oversized": 1}
    assert [a.reason for a in sink.of(Kind.GAP)] == ["reconnect"]
