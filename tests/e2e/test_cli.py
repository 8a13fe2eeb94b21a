"""The commands a newcomer runs, as a subprocess: one JSON document on stdout each."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import orjson

from streams.settings import Settings


def _run(*args: str, settings: Settings) -> tuple[int, dict[str, object]]:
    env = {**os.environ, **settings.to_env()}
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args, "--json"],
        env=env,
        capture_output=True,
        timeout=240,
        check=False,
    )
    return done.returncode, orjson.loads(done.stdout)  # stdout holds the document only


async def test_demo_reconciles_and_status_reports(
    settings: Settings, pg: asyncpg.Connection
) -> None:
    code, summary = _run("demo", "--events", "5000", "--no-services", settings=settings)
    assert code == 0, summary
    assert summary["namespace"] == settings.namespace
    assert summary["produced"] == summary["accepted"] == 5000
    assert summary["dead_lettered"] == 0 and summary["reconciled"] is True
    rows = summary["rows"]
    assert isinstance(rows, dict) and rows["ticks"] == 5000 and rows["bars"] > 0
    keys = summary["redis_keys"]
    assert isinstance(keys, dict)
    # 50 simulated seconds ending on an hour boundary: every instrument has closed bars of
    # 1m, 5m, 15m and 1h (and 1d at midnight), each with its latest-indicators hash; the
    # 64-bar damping window never fills, so no signal.
    per_instrument = keys["bars"] // 7
    assert keys["bars"] == 7 * per_instrument and per_instrument in (4, 5)
    assert keys["indicators"] == keys["bars"]
    assert keys["trade"] == 7 and keys["instruments"] == 1
    assert set(keys) == {"trade", "bars", "instruments", "indicators"}

    code, status = _run("status", settings=settings)
    assert code == 0
    services = status["services"]
    assert isinstance(services, dict)
    assert services["postgres"]["license"] == "apache"
    assert all(s["ok"] for s in services.values())
    assert status["rows"] == rows
    assert status["kernel_backend"] in ("numpy", "cupy")
    assert status["library"] == "default"  # nothing trained in this namespace
    assert isinstance(status["placement"], list)
