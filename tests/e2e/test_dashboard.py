"""The operator's view of a running worker: /dashboard in a real headless Chromium draws
lag and freshness charts from live data, /lag and /freshness serve it, /metrics parses and
carries the lag gauges, and `sepstream lag --json` judges the same group in-process."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from streams.kafka.admin import ensure_topics
from streams.kafka.producer import BatchingProducer
from streams.settings import Settings
from streams.sources import synthetic
from streams.topics import hot_topics
from streams.worker_process import WorkerProcess
from tests.conftest import ARTIFACTS, eventually

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTRUMENTS = len(synthetic.DEFAULT_INSTRUMENTS)  # each gets trades
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and shutil.which("chromedriver")),
    reason="needs Debian chromium + chromium-driver (.ci/run installs them)",
)


def _browse(url: str, screenshot: Path) -> dict[str, Any]:
    """Load the page, wait for both charts to have data, screenshot it, read the DOM."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#lag-chart path.series"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#freshness-chart rect.bar"))
        # the lag line needs two points: wait for a refresh that brings the second
        wait.until(
            lambda d: any(
                int(p.get_attribute("data-points") or 0) >= 2
                for p in d.find_elements(By.CSS_SELECTOR, "#lag-chart path.series")
            )
        )
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        return {
            "paths": [
                (p.get_attribute("data-group"), int(p.get_attribute("data-points") or 0))
                for p in driver.find_elements(By.CSS_SELECTOR, "#lag-chart path.series")
            ],
            "bars": len(driver.find_elements(By.CSS_SELECTOR, "#freshness-chart rect.bar")),
            "rows": [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#lag-table tbody tr")],
            "error": driver.find_element(By.ID, "error").text,
        }
    finally:
        driver.quit()


async def test_dashboard_lag_metrics_and_cli(settings: Settings, rds: aioredis.Redis) -> None:
    settings = Settings.from_env(
        {}, **{**settings.__dict__, "lag_interval_s": 1.0, "lag_window": 3}
    )
    await ensure_topics(settings)
    base = f"http://{settings.web_host}:{settings.web_port}"
    worker = WorkerProcess(settings, ARTIFACTS / f"{settings.namespace}-dashboard.log").start()
    try:
        now = time.time_ns()
        async with BatchingProducer(settings, hot_topics(settings)["trades"]) as producer:
            produced = await synthetic.produce(
                producer, 3, 3000, start_ns=now - 60 * 10**9, rate_per_s=50.0
            )
        assert produced == 3000

        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> Any:
                try:
                    async with http.get(base + path) as r:
                        return await r.read() if r.status == 200 else None
                except aiohttp.ClientError:
                    return None  # not listening yet

            async def lag_ready() -> dict[str, Any] | None:
                raw = await get("/lag")
                doc = orjson.loads(raw) if raw else None
                if not doc or len(doc["history"]) < 2 or doc["latest"] is None:
                    return None
                groups = {g["group"]: g for g in doc["latest"]["groups"]}
                return doc if settings.group_id in groups else None

            async def fresh_ready() -> dict[str, Any] | None:
                raw = await get("/freshness")
                doc = orjson.loads(raw) if raw else None
                ages = [i["age_s"] for i in (doc or {}).get("instruments", [])]
                return (
                    doc if len(ages) == INSTRUMENTS and all(a is not None for a in ages) else None
                )

            lag = await eventually(lag_ready, within=120)
            fresh = await eventually(fresh_ready, within=60)
            assert lag["interval_s"] == 1.0
            topics = {p["topic"] for g in lag["latest"]["groups"] for p in g["partitions"]}
            assert hot_topics(settings)["trades"] in topics
            assert all(set(h["groups"]) for h in lag["history"][-2:])
            # the sink wrote ticks received ~60 s ago or less: fresh, not stale
            assert all(0 <= i["age_s"] < 300 and i["stale"] is False for i in fresh["instruments"])
            assert fresh["alert_after_s"] == settings.freshness_alert_s

            shot = ARTIFACTS / "dashboard.png"
            page = await asyncio.to_thread(_browse, base + "/dashboard", shot)
            assert page["error"] == "", page
            assert any(g == settings.group_id and n >= 2 for g, n in page["paths"]), page
            assert page["bars"] == INSTRUMENTS, page
            assert any(settings.group_id in row for row in page["rows"]), page
            assert shot.stat().st_size > 10_000

            raw = await get("/metrics")
            assert raw is not None
            families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
            lag_samples = [
                s
                for s in families["sepstream_consumer_lag_messages"].samples
                if s.labels["group"] == settings.group_id
            ]
            assert {s.labels["topic"] for s in lag_samples} >= {hot_topics(settings)["trades"]}
            assert "sepstream_consumer_group_status" in families
            assert "sepstream_data_freshness_seconds" in families
            assert len(families["sepstream_data_freshness_seconds"].samples) == INSTRUMENTS
            assert "sepstream_kernel_seconds" in families
            # the worker's consumer and the lag monitor's both adapt their fetch wait
            waits = {
                s.labels["consumer"]: s.value
                for s in families["sepstream_kafka_fetch_wait_ms"].samples
            }
            assert {"worker", "lag"} <= waits.keys(), waits
            assert waits["worker"] >= settings.kafka_fetch_max_wait_ms

        env = {**os.environ, **settings.to_env()}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "streams.cli", "lag", "--json", "--group", settings.group_id],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        doc = orjson.loads(done.stdout)  # stdout holds the document only
        assert [g["group"] for g in doc["groups"]] == [settings.group_id]
        group = doc["groups"][0]
        assert done.returncode == (2 if group["status"] in ("ERROR", "STOPPED") else 0)
        assert doc["window"] == 3
        trades = [p for p in group["partitions"] if p["topic"] == hot_topics(settings)["trades"]]
        assert len(trades) == settings.partitions
        assert all(p["end"] >= (p["committed"] or 0) for p in trades)
        assert sum(p["end"] for p in trades) > 0

        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "streams.cli", "status", "--json"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        status = orjson.loads(done.stdout)
        assert done.returncode == 0, status
        group_lag = status["lag_groups"][settings.group_id]
        assert group_lag["status"] in ("OK", "WARNING"), group_lag
        fresh_rows = status["freshness"]["instruments"]
        assert len(fresh_rows) == INSTRUMENTS and not any(f["stale"] for f in fresh_rows)
        quality = status["quality"]["instruments"]
        assert sum(q["accepted"] for q in quality) == produced  # every event, none rejected
        assert all(q["rejected"] == 0 and q["score"] == 1.0 for q in quality)
        readpath = status["readpath"]
        assert readpath["key"] == f"{settings.redis_prefix}stats:readpath"
        assert readpath["requests"] == 0 and readpath["ratio"] is None  # nothing read yet
        assert worker.running
    finally:
        worker.stop()
