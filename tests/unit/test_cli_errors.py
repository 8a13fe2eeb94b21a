"""An expected failure ends a command with one `sepstream: ...` line on stderr, no traceback.

Each command runs as the user runs it (`python -m streams.cli`), against a port where
nothing listens, so no service needs to be up.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys

import pytest
import redis.exceptions

from streams.cli.failures import describe
from streams.settings import Settings
from streams.stores.connections import redis_client
from tests.conftest import REPO, free_port


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # only the variables of the case: an unrelated SEPSTREAM_* would add a warning line
    base = {k: v for k, v in os.environ.items() if not k.startswith("SEPSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command, after checking the contract."""
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sepstream: "), lines[0]
    assert done.stdout == ""  # no half-written --json document
    return lines[0]


@pytest.mark.parametrize("command", [["lag", "--json"], ["db-init"], ["symbols", "list"]])
def test_bad_setting_names_the_variable_and_value(command: list[str]) -> None:
    done = _cli(*command, env={"SEPSTREAM_PARTITIONS": "four"})
    line = _one_line(done)
    assert done.returncode == 2
    assert "SEPSTREAM_PARTITIONS" in line and "four" in line


def test_lag_with_the_broker_unreachable() -> None:
    port = free_port()
    done = _cli("lag", "--json", env={"SEPSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"})
    line = _one_line(done)
    assert line.startswith("sepstream: lag: Kafka: ")
    assert line.endswith(f"(127.0.0.1:{port})")


def test_symbols_list_names_the_subcommand() -> None:
    port = free_port()
    done = _cli("symbols", "list", env={"SEPSTREAM_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"})
    line = _one_line(done)
    assert line.startswith("sepstream: symbols list: Kafka: ")
    assert f"127.0.0.1:{port}" in line


def test_db_init_with_postgresql_unreachable() -> None:
    port = free_port()
    dsn = f"postgresql://sepstream:dsn-secret@127.0.0.1:{port}/sepstream"
    done = _cli("db-init", "--json", env={"SEPSTREAM_PG_DSN": dsn})
    line = _one_line(done)
    assert done.returncode == 1
    assert line == f"sepstream: db-init: PostgreSQL: connection refused (127.0.0.1:{port})"


def test_version_is_the_installed_distributions() -> None:
    done = _cli("--version", env={})
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"sepstream {importlib.metadata.version('sepstream')}\n"


async def test_redis_failure_names_the_endpoint_without_the_password() -> None:
    port = free_port()
    settings = Settings.from_env({}, redis_url=f"redis://:hunter2@127.0.0.1:{port}/0")
    client = redis_client(settings)
    try:
        with pytest.raises(redis.exceptions.ConnectionError) as caught:
            await client.ping()
    finally:
        await client.aclose()
    text = describe(caught.value, settings)
    assert text.startswith("Redis: ")
    assert f"127.0.0.1:{port}" in text
    assert "hunter2" not in text
