"""Expected failures end a command with one line on stderr, never a traceback.

An operator's mistakes and outages are expected: a bad `SEPSTREAM_*` value, a broker,
database or Redis that is down or refuses us, a file that is missing. `CommandGroup` catches
them for every command in one place and prints `sepstream: <command>: <what failed>
(<endpoint>)`; anything else is a bug and keeps its traceback. The settings are loaded here
too, because a bad one is the first failure every command can meet.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import IO, Any, Final
from urllib.parse import urlsplit

import asyncpg
import click
import redis.exceptions
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
)

from streams.ops.logs import configure_logging, redact_secrets
from streams.settings import Settings, SettingsError

_KAFKA: Final = (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError)
_POSTGRES: Final = (
    asyncpg.PostgresConnectionError,  # class 08: refused, lost, rejected
    asyncpg.InvalidAuthorizationSpecificationError,  # class 28: no such role, bad password
    asyncpg.InvalidCatalogNameError,  # no such database
    asyncpg.CannotConnectNowError,  # starting up or shutting down
)
_REDIS: Final = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# OSError covers ConnectionError and TimeoutError (asyncio's too), and missing files.
EXPECTED: Final = (OSError, SettingsError, *_KAFKA, *_POSTGRES, *_REDIS)

# The library a plain OSError came from names the service that failed.
_SERVICE_OF_MODULE: Final = (("aiokafka", "Kafka"), ("asyncpg", "PostgreSQL"), ("redis", "Redis"))
_SETTINGS_KEY: Final = "sepstream.settings"


class Failure(click.ClickException):
    """Printed as `sepstream: <message>` (each line), with its own exit status."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.format_message().splitlines() or [""]:
            click.echo(f"sepstream: {line}", file=file, err=file is None)


def load_settings(*, client_logs: bool = False) -> Settings:
    """The settings of this run, with logging configured by them.

    A bad value ends the command with exit status 2 and the one line `SettingsError` gives.
    Logging goes to stderr before the settings are read, so that the warning about unknown
    `SEPSTREAM_*` variables never lands in a `--json` document on stdout. A command that
    fails when it cannot reach the broker says so in its one line, so aiokafka's error log
    of the same failure is kept back unless `client_logs` (or the log level is debug):
    the commands that run on (`worker`, `collect`, `demo`, `replay`) keep it, as it tells
    what they are waiting for.
    """
    configure_logging()
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise Failure(str(exc), exit_code=2) from None
    configure_logging(settings.log_level, settings.log_format)
    if not client_logs and settings.log_level != "debug":
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:  # for `describe` to name the endpoint that failed
        ctx.meta[_SETTINGS_KEY] = settings
    return settings


class CommandGroup(click.Group):
    """A click group whose commands end an expected failure with one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EXPECTED as exc:
            command = " ".join([*_names_below_root(ctx), ctx.invoked_subcommand or ""]).strip()
            settings = ctx.meta.get(_SETTINGS_KEY)
            code = 2 if isinstance(exc, SettingsError) else 1
            raise Failure(f"{command}: {describe(exc, settings)}", exit_code=code) from exc


def _names_below_root(ctx: click.Context) -> list[str]:
    """`symbols` for the `symbols` group's context; nothing for the root's."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return names[::-1]


def describe(exc: BaseException, settings: Settings | None) -> str:
    """`<service>: <reason> (<endpoint>)`, as far as each part is known; no secrets."""
    service = _service(exc)
    reason = _reason(exc)
    what = f"{service}: {reason}" if service else reason
    endpoint = _endpoint(service, settings) if settings is not None else None
    if endpoint is None and isinstance(exc, OSError) and exc.filename is not None:
        endpoint = str(exc.filename)
    if endpoint is not None and endpoint not in what:
        what = f"{what} ({endpoint})"
    scrubbed: str = redact_secrets(None, "", {"text": what})["text"]
    return scrubbed


def _service(exc: BaseException) -> str | None:
    if isinstance(exc, _KAFKA):
        return "Kafka"
    if isinstance(exc, _POSTGRES):
        return "PostgreSQL"
    if isinstance(exc, _REDIS):
        return "Redis"
    if isinstance(exc, SettingsError):
        return None
    # A plain OSError (connection refused, timed out): the deepest of the three clients'
    # frames it passed through says who was connecting.
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        module = str(frame.f_globals.get("__name__", ""))
        for prefix, service in _SERVICE_OF_MODULE:
            if module == prefix or module.startswith(prefix + "."):
                found = service
    return found


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text.removeprefix(f"{type(exc).__name__}: ")
    if isinstance(exc, KafkaConnectionError):  # the endpoint is printed from the settings
        text = re.sub(r" from \[.*\]$", "", text)
    if not text:
        return "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
    return text


def _endpoint(service: str | None, settings: Settings) -> str | None:
    """host:port of the service as configured (never the credentials in a URL)."""
    if service == "Kafka":
        return settings.kafka_bootstrap
    if service == "PostgreSQL":
        return _host_port(settings.pg_dsn, 5432)
    if service == "Redis":
        return _host_port(settings.redis_url, 6379)
    return None


def _host_port(url: str, default_port: int) -> str | None:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or None
    if not parts.hostname:
        return None
    try:
        port = parts.port or default_port
    except ValueError:  # a port that is no number: the hostname still helps
        return parts.hostname
    return f"{parts.hostname}:{port}"
