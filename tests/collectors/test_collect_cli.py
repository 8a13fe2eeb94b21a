"""`sepstream collect` as its own process, into the real broker, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner

from schemas.batch import decode_batch
from schemas.events import Kind
from streams.cli import main
from streams.kafka.admin import end_offsets, read_range
from streams.settings import Settings
from tests.collectors.helpers import frames
from tests.collectors.servers import ScriptedServer, Step, serve
from tests.collectors.test_resilience import binance_trade, dumps
from tests.conftest import REPO, free_port


async def test_collect_binance_into_the_topic_and_stop_cleanly(
    settings: Settings, tmp_path: Path
) -> None:
    first: list[Step] = [*(binance_trade("BTCUSDT", i) for i in (1, 2, 3)), ("drop", None)]
    second: list[Step] = [
        *(binance_trade("BTCUSDT", i) for i in (2, 3, 4, 5)),  # 2 and 3 are replays
        ("send", dumps(frames("binance")[4])),  # a closed 1m kline
        ("send", dumps(frames("binance")[5])),  # a book ticker quote
        ("send", "{garbage"),
        ("silent", None),
    ]
    server = ScriptedServer([first, second])
    log_path = tmp_path / "collect.log"
    async with serve(server, [web.get("/stream", server.websocket)]) as port:
        run_settings = settings.replace(
            binance_ws_url=f"ws://127.0.0.1:{port}",
            collector_backoff_initial_s=0.05,
            collector_backoff_max_s=0.2,
            collector_stale_after_s=30.0,
            collector_metrics_port=free_port(),
            log_format="json",
        )
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "streams.cli",
                "collect",
                "--venue",
                "binance",
                "--symbols",
                "btcusdt",  # the venue's spelling is accepted too
                cwd=REPO,
                env={**os.environ, **run_settings.to_env()},
                stdout=log,
                stderr=log,
            )
            try:
                await asyncio.wait_for(server.played.wait(), 60)
                await asyncio.sleep(1.0)  # the last frames reach the collector
                url = f"http://127.0.0.1:{run_settings.collector_metrics_port}/metrics"
                async with aiohttp.ClientSession() as http, http.get(url) as resp:
                    metrics = await resp.text()
            finally:
                proc.send_signal(signal.SIGTERM)
                rc = await asyncio.wait_for(proc.wait(), 30)
    output = log_path.read_text()
    assert rc == 0, output
    assert '"collector stopped"' in output and "Traceback" not in output

    topic = settings.topic("md.trades.v1")
    trades: list[int] = []
    kinds: list[tuple[str, str | None]] = []
    async for _, value in read_range(settings, {}, await end_offsets(settings, [topic])):
        batch = decode_batch(value)
        assert batch.key == "binance:BTC-USDT"
        kinds += [(batch.kind.value, batch.reason or batch.timeframe)] * len(batch)
        if batch.kind is Kind.TRADE:
            trades += batch.cols["trade_id"].tolist()
            assert (batch.cols["ts_recv"] > batch.cols["ts_event"]).all()
    assert trades == [1, 2, 3, 4, 5]  # none lost, none twice
    for sample in (
        'sepstream_collector_malformed_frames_total{reason="bad_json",venue="binance"} 1.0',
        'sepstream_collector_replays_dropped_total{venue="binance"} 2.0',
        'sepstream_collector_gaps_total{reason="reconnect",venue="binance"} 1.0',
    ):
        assert sample in metrics, metrics
    assert sorted(kinds) == sorted(
        [("trade", None)] * 5 + [("gap", "reconnect"), ("bar", "1m"), ("quote", None)]
    )


def test_collect_refuses_bad_input_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEPSTREAM_OANDA_TOKEN", raising=False)
    monkeypatch.setenv("SEPSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing may be contacted
    runner = CliRunner()
    result = runner.invoke(main, ["collect", "--venue", "oanda", "--symbols", "EUR-USD"])
    assert result.exit_code == 1 and "SEPSTREAM_OANDA_TOKEN" in result.output
    result = runner.invoke(main, ["collect", "--venue", "binance", "--symbols", "NOPE"])
    assert result.exit_code == 2 and "--symbols" in result.output
    result = runner.invoke(main, ["collect", "--venue", "nasdaq", "--symbols", "A-B"])
    assert result.exit_code == 2
