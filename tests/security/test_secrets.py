"""Secrets come from the environment or files and never reach a log line or `--json` output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import structlog

from streams.ops.logs import configure_logging
from streams.settings import SECRETS, Settings
from streams.stores.connections import pg_connect
from tests.conftest import REPO, free_port

PG_SECRET = "Pg-S3cret-" + uuid.uuid4().hex[:8]
REDIS_SECRET = "Rd-S3cret-" + uuid.uuid4().hex[:8]
SASL_SECRET = "Ks-S3cret-" + uuid.uuid4().hex[:8]
# the PostgreSQL the suite runs against (SEPSTREAM_PG_DSN may move it), with a wrong password
_PG = urlsplit(Settings.from_env().pg_dsn)
_PG_AT = f"{_PG.hostname}:{_PG.port or 5432}{_PG.path}"
WRONG_DSN = f"postgresql://sepstream:{PG_SECRET}@{_PG_AT}"
MASKED_DSN = f"postgresql://sepstream:***@{_PG_AT}"


def _secret_env(tmp_path: Path) -> dict[str, str]:
    """Secrets as an operator passes them: a mounted file each, and a DSN carrying one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEPSTREAM_")}
    for name, value in (
        ("REDIS_PASSWORD", REDIS_SECRET),
        ("KAFKA_SASL_PASSWORD", SASL_SECRET),
        # the worker's and the readers' roles: as wrong as the owner's in the DSN
        ("PG_WRITER_PASSWORD", PG_SECRET),
        ("PG_READER_PASSWORD", PG_SECRET),
    ):
        (tmp_path / name).write_text(value + "\n")
        env[f"SEPSTREAM_{name}_FILE"] = str(tmp_path / name)
    ns = f"t{uuid.uuid4().hex[:10]}"
    env |= {
        # a wrong password inside the DSN: every PostgreSQL connection fails authentication
        "SEPSTREAM_PG_DSN": WRONG_DSN,
        "SEPSTREAM_NAMESPACE": ns,
        "SEPSTREAM_APP_ID": f"sepstream-{ns}",
        "SEPSTREAM_WEB_PORT": str(free_port()),
        "SEPSTREAM_LOG_FORMAT": "json",
        "SEPSTREAM_SESSION_TIMEOUT_S": "6",
        "SEPSTREAM_REBALANCE_TIMEOUT_S": "4",
    }
    return env


def _assert_clean(text: str) -> None:
    for secret in (PG_SECRET, REDIS_SECRET, SASL_SECRET):
        assert secret not in text


def test_every_secret_reads_from_a_file_and_is_redacted(tmp_path: Path) -> None:
    env = {}
    for name in SECRETS:
        path = tmp_path / name
        path.write_text(f"{name}-value-{uuid.uuid4().hex}\n")
        env[f"SEPSTREAM_{name.upper()}_FILE"] = str(path)
        env[f"SEPSTREAM_{name.upper()}"] = "from-the-env-loses"
    s = Settings.from_env(env)
    for name in SECRETS:
        assert getattr(s, name) == (tmp_path / name).read_text().strip()
    shown = json.dumps(s.redacted()) + repr(s)
    for name in SECRETS:
        assert getattr(s, name) not in shown
        assert s.redacted()[name] == "***"


def test_worker_start_logs_no_secret(tmp_path: Path, services: None) -> None:
    """A real `sepstream worker` logs its (redacted) settings at start; nothing leaks."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker"],
        cwd=REPO,
        env=_secret_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "Starting..." in line and any("worker starting" in x for x in lines):
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rest = proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = proc.communicate()[1]
    text = "".join(lines) + rest
    start = next(json.loads(x) for x in lines if '"worker starting"' in x)
    assert start["settings"]["redis_password"] == "***"
    assert start["settings"]["kafka_sasl_password"] == "***"
    assert start["settings"]["pg_dsn"] == MASKED_DSN
    _assert_clean(text)


def test_status_with_failing_auth_shows_no_secret(tmp_path: Path, services: None) -> None:
    """`sepstream status --json` when PostgreSQL rejects the credentials (Redis unreachable)."""
    env = _secret_env(tmp_path) | {"SEPSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = subprocess.run(
        [sys.executable, "-m", "streams.cli", "status", "--json"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert doc["services"]["postgres"]["ok"] is False
    assert "password authentication failed" in doc["services"]["postgres"]["error"]
    assert doc["services"]["redis"]["ok"] is False
    _assert_clean(proc.stdout + proc.stderr)


async def test_connection_failure_logged_with_its_dsn_is_masked(
    capsys: pytest.CaptureFixture[str], services: None
) -> None:
    """Even code that logs a DSN and the exception of a failed connection leaks nothing."""
    configure_logging("info", "json")  # the real pipeline: JSON lines on stderr
    settings = Settings.from_env({"SEPSTREAM_PG_DSN": WRONG_DSN})
    log = structlog.get_logger("test.secrets")
    with pytest.raises(asyncpg.InvalidPasswordError) as caught:
        await pg_connect(settings, timeout=10)
    try:
        raise ConnectionError(f"could not reach {settings.dsn_with_password()}") from caught.value
    except ConnectionError:
        log.exception("postgres unreachable", dsn=settings.pg_dsn, password=PG_SECRET)
    err = capsys.readouterr().err
    event = json.loads(err.strip().splitlines()[-1])
    assert event["dsn"] == MASKED_DSN
    assert event["password"] == "***"
    assert "InvalidPasswordError" in event["exception"]
    _assert_clean(err)


async def test_redis_password_from_settings(tls_services: object) -> None:
    """SEPSTREAM_REDIS_PASSWORD reaches the (TLS) server; a wrong or missing one is refused."""
    import redis.exceptions

    from streams.stores.connections import redis_client
    from tests.security.conftest import TlsServices

    assert isinstance(tls_services, TlsServices)
    admin = redis_client(tls_services.settings())
    await admin.config_set("requirepass", REDIS_SECRET)
    try:
        ok = redis_client(tls_services.settings(redis_password=REDIS_SECRET))
        assert await ok.ping() is True
        await ok.aclose()
        for password in ("", "wrong"):
            bad = redis_client(tls_services.settings(redis_password=password))
            with pytest.raises(redis.exceptions.AuthenticationError):
                await bad.ping()
            await bad.aclose()
    finally:
        reset = redis_client(tls_services.settings(redis_password=REDIS_SECRET))
        await reset.config_set("requirepass", "")
        await reset.aclose()
        await admin.aclose()
