"""Settings from the environment (`SEPSTREAM_*`), typed and checked by pydantic-settings.

The defaults run against `deploy/dev.sh up`. A value of the wrong type or out of range
fails with one `SettingsError` line naming the variable and the value; a `SEPSTREAM_*`
variable that names no setting is reported with the closest names (a typo is otherwise
silently ignored). Secrets never need to be in a DSN: `SEPSTREAM_PG_PASSWORD` or
`SEPSTREAM_PG_PASSWORD_FILE` override the DSN's password, and `redacted()` is what gets
logged. Every field is documented in README.md, "Configuration".
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import structlog
from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from schemas.ddl import check_ident

log = structlog.get_logger(__name__)

PREFIX: Final = "SEPSTREAM_"
# Fields that are secrets: settable from `SEPSTREAM_<NAME>_FILE`, masked by `redacted()`.
SECRETS: Final = (
    "pg_password",
    "pg_writer_password",
    "pg_reader_password",
    "redis_password",
    "kafka_sasl_password",
    "oanda_token",
)
# `SEPSTREAM_*` variables that are not settings of a process: deploy/dev.sh's, the
# worker CLI's own options, and docker-compose.yml's interpolation variables.
NOT_SETTINGS: Final = frozenset(
    {
        "SEPSTREAM_CPU_BIND",
        "SEPSTREAM_WORKER_INDEX",
        "SEPSTREAM_WORKERS",
        "SEPSTREAM_PYTHON_BOOTSTRAP",
        "SEPSTREAM_IMAGE",
        "SEPSTREAM_GRAFANA_PASSWORD",
        "SEPSTREAM_GRAFANA_PORT",
        "SEPSTREAM_KAFKA_ADVERTISED_HOST",
        "SEPSTREAM_KAFKA_AUTO_CREATE_TOPICS",
        "SEPSTREAM_KAFKA_CLUSTER_ID",
        "SEPSTREAM_KAFKA_HEAP_OPTS",
        "SEPSTREAM_KAFKA_HOST_PORT",
        "SEPSTREAM_KAFKA_PARTITIONS",
        "SEPSTREAM_KAFKA_RETENTION_HOURS",
        "SEPSTREAM_PG_HOST_PORT",
        "SEPSTREAM_PROMETHEUS_PORT",
        "SEPSTREAM_PROMETHEUS_RETENTION",
        "SEPSTREAM_REDIS_HOST_PORT",
        "SEPSTREAM_REDIS_MAXMEMORY",
    }
)
NOT_SETTINGS_PREFIXES: Final = ("SEPSTREAM_DEV_",)
KNOWN_VENUES: Final = (
    "binance",
    "coinbase",
    "kraken",
    "oanda",
    "file",
    "sim_binance",
    "sim_coinbase",
    "sim_kraken",
)

# The environment `Settings.from_env` reads; unset: `Settings(...)` is defaults + arguments.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("sepstream_environ", default=None)


class SettingsError(ValueError):
    """A setting that cannot be used; its message is one line per bad variable."""


class _Environ(PydanticBaseSettingsSource):
    """`SEPSTREAM_<FIELD>` from the mapping `from_env` was given, as raw strings: pydantic
    converts them (lax mode), the comma lists split in `Settings._split`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        key = PREFIX + field_name.upper()
        return self.environ.get(key), key, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, info in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(info, name)
            if value is not None:
                out[name] = value
        return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=False)

    # connections
    kafka_bootstrap: str = "127.0.0.1:19092"
    pg_dsn: str = "postgresql://sepstream@127.0.0.1:55432/sepstream"
    pg_password: str = Field(default="sepstream", repr=False)
    redis_url: str = "redis://127.0.0.1:56379/0"
    # security (docs/OPERATIONS.md): TLS, roles, secrets. Secrets come from the environment
    # or, with a `_FILE` suffix, from a file (SEPSTREAM_PG_PASSWORD_FILE, ...); never logged.
    pg_sslmode: Literal["", "disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = (
        ""  # "": asyncpg's prefer
    )
    pg_sslrootcert: str = ""  # CA bundle for verify-ca / verify-full
    pg_sslcert: str = ""  # client certificate (and key) when the server wants one
    pg_sslkey: str = ""
    # Least privilege by default: the worker logs in as the writer (rows only, no DDL), the
    # read path, dashboard and status as the reader; the DSN's user is the schema owner that
    # `sepstream db-init` runs as. The defaults are the roles deploy/dev.sh creates; "" = the
    # DSN's user (one role for everything, which then runs the DDL itself).
    pg_writer_user: str = "sepstream_writer"
    pg_writer_password: str = Field(default="sepstream_writer", repr=False)
    pg_reader_user: str = "sepstream_reader"
    pg_reader_password: str = Field(default="sepstream_reader", repr=False)
    # A writer connection to a namespace whose schema is missing has the owner provision it
    # first (needs the owner's password; streams/provision.py). false: `db-init` only.
    pg_auto_provision: bool = True
    redis_password: str = Field(default="", repr=False)
    redis_ca_file: str = ""  # verify a rediss:// server against this CA (else the system's)
    redis_cert_file: str = ""
    redis_key_file: str = ""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = Field(default="", repr=False)
    kafka_ssl_cafile: str = ""  # "" = the system's CAs
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    # Kafka and Faust tuning of a worker (streams/app.py)
    replication_factor: int = Field(default=1, ge=1)  # of the topics a worker creates
    producer_linger_ms: float = Field(default=5.0, ge=0)
    producer_max_batch_bytes: int = Field(default=1_048_576, ge=1)
    consumer_max_fetch_bytes: int = Field(default=4_194_304, ge=1)
    stream_buffer_maxsize: int = Field(default=1024, ge=1)  # records queued per agent
    # identity and isolation: the namespace prefixes topics, the Postgres schema and Redis keys
    app_id: str = "sepstream"
    namespace: str = ""
    partitions: int = Field(default=4, ge=1)
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    # collectors' adaptive micro-batching (docs/ARCHITECTURE.md#why-micro-batches)
    batch_max_events: int = 512
    batch_linger_ms: float = 5.0
    # validation rules
    max_future_skew_ms: int = 5_000
    max_age_s: int = 0  # 0 = no age limit (replays and backfills carry old data)
    min_event_time_s: int = 631_152_000  # 1990-01-01: earlier = a unit mistake (s/ms/µs as ns)
    max_recv_before_event_ms: int = 60_000  # ts_recv this much before ts_event: clocks broken
    # Plausible values (kernels/validation.py; docs/OPERATIONS.md "Validation"). Each within
    # [1e-30, 1e30], so no sum of price·size a later stage computes can overflow (checked at
    # start).
    min_price: float = 1e-12
    max_price: float = 1e9
    min_size: float = 1e-12  # a size or volume is 0 or at least this
    max_size: float = 1e15  # one trade or quote side
    max_volume: float = 1e18  # one bar
    max_quote_spread: float = 2.0  # ask / bid
    max_bar_range: float = 100.0  # high / low
    max_event_id: int = 4_611_686_018_427_387_904  # 2**62: trade ids, seq, a bar's trades
    max_record_bytes: int = 1_048_576
    # Trade ids remembered per instrument (kernels.dedup): 16 B each, allocated when the
    # instrument is first seen, so 4,096 = 64 KiB per instrument (tracemalloc: 64.4 KiB),
    # 64 MiB at 1,000 instruments: room within the 300 MB worker goal, where 16,384 (256 MiB)
    # or 8,192 (128 MiB) would not be. Duplicates (producer retries, a reconnect's overlap)
    # come within seconds of the original: 4,096 ids is 4 s of a 1,000 trades/s instrument
    # and minutes of a typical one. Older repeats than the window are not caught.
    dedup_window: int = 4_096
    venues: Annotated[tuple[str, ...], NoDecode] = KNOWN_VENUES
    symbols: Annotated[tuple[str, ...], NoDecode] = ()  # empty = any well-formed BASE-QUOTE symbol
    validate_max_records: int = 256  # md.trades.v1 records per validate micro-batch
    validate_linger_ms: int = 2  # longest a record waits for its validate micro-batch
    # bars
    bar_grace_ms: int = 2_000
    bar_correction_horizon_min: int = 1_440
    bars_max_records: int = 256  # md.events.v1 records per bars micro-batch
    bars_linger_ms: int = 10  # longest a record waits for its bars micro-batch to fill
    # sinks
    archive_ticks: bool = True
    sink_max_records: int = 256
    sink_linger_ms: int = 20  # longest a record waits for its write batch to fill
    sink_retry_max_s: float = 5.0
    redis_trade_ttl_s: int = 900
    redis_bar_ttl_periods: int = 600  # a bars key expires after this many bar periods idle
    redis_bars_keep: int = 500
    redis_forming_ttl_s: int = 120  # forming 1m bars vanish this long after the last update
    compress_after_days: int = 7
    # read path (`sepstream bars`, HTTP /bars)
    read_max_limit: int = 5_000  # bars per request
    read_rest_timeout_s: float = 3.0  # whole venue REST fetch of one request
    read_http_rest: bool = False  # may an (anonymous) HTTP /bars request fetch from a venue?
    # bitspace damping (docs/ARCHITECTURE.md#bitspace-damping) and its path library
    damping_window: int = Field(default=64, ge=3)  # W closes per window (T + 1 = W - 1 bits)
    damping_max_batch: int = 1024  # bar records per micro-batch (one damp() call each)
    damping_max_wait_ms: int = 200  # longest a full window waits for its micro-batch
    damping_backend: Literal["auto", "numpy", "cupy"] = "auto"
    damping_dtype: Literal["float64", "float32"] = "float64"  # float64 is the reference
    library_k: int = 64  # reference paths in a trained library
    library_wait_s: float = 10.0  # at start, how long damping waits for the published library
    redis_signal_ttl_periods: int = 600  # the latest-signal hash expires after this many periods
    redis_signals_maxlen: int = 10_000  # approximate length cap of the signals stream
    # incremental indicators (docs/ARCHITECTURE.md#indicators)
    indicators_max_batch: int = 1024  # bar records per micro-batch (vectorised per round)
    indicators_max_wait_ms: int = 200  # longest a closed bar waits for its micro-batch
    redis_indicator_ttl_periods: int = 600  # latest-indicators hash TTL, in bar periods
    tick_retention_days: int = 0  # 0 = keep forever
    # Kafka client timeouts: small so that joins are quick (matters on the dev broker)
    session_timeout_s: float = 10.0
    rebalance_timeout_s: float = 10.0
    commit_interval_s: float = 1.0
    # Longest a fetch waits for data. Kafka answers as soon as data arrives; the dev broker
    # (Tansu) waits it out, so it bounds the latency each pipeline hop adds there. The base:
    # it grows while the broker answers empty with a backlog waiting (streams/fetchwait.py).
    kafka_fetch_max_wait_ms: int = 10
    # venue collectors (`sepstream collect`): endpoints are settings so tests and proxies
    # can point a collector elsewhere; the defaults are the venues' public endpoints
    binance_ws_url: str = "wss://stream.binance.com:9443"
    coinbase_ws_url: str = "wss://ws-feed.exchange.coinbase.com"
    kraken_ws_url: str = "wss://ws.kraken.com/v2"
    oanda_stream_url: str = "https://stream-fxpractice.oanda.com"
    oanda_token: str = Field(default="", repr=False)  # the v20 API token (a secret)
    oanda_account: str = ""  # the v20 account id
    collector_timeframe: str = "1m"  # kline/ohlc interval subscribed where a venue has bars
    collector_heartbeat_s: float = 20.0  # websocket ping interval
    collector_stale_after_s: float = 30.0  # no frame for this long: reconnect
    collector_connect_timeout_s: float = 10.0
    collector_backoff_initial_s: float = 0.5
    collector_backoff_max_s: float = 30.0
    collector_max_frame_bytes: int = 1_048_576  # larger frames are counted and skipped
    collector_metrics_port: int = 0  # > 0: `sepstream collect` serves /metrics on web_host
    collector_control_wait_s: float = 10.0  # at start, longest wait for md.control.subscriptions
    # REST backfill of missing 1m bars (`sepstream backfill`)
    binance_rest_url: str = "https://api.binance.com"
    oanda_rest_url: str = "https://api-fxpractice.oanda.com"  # candles; token as for streaming
    backfill_requests_per_s: float = 5.0  # klines cost weight 2 of Binance's 6000/min
    backfill_max_retries: int = 5  # per request, on 429/418/5xx and connection errors
    # operators' view: lag monitor (agents/lag.py, `sepstream lag`), data health alerts
    lag_interval_s: float = 5.0  # seconds between lag samples
    lag_window: int = 10  # samples per Burrow-style window (kernels/lagstatus.py)
    lag_history: int = 720  # per-group lag points kept for /lag and /dashboard
    freshness_alert_s: float = 300.0  # an instrument with no tick for longer is stale
    quality_window_s: float = 900.0  # accepted vs dead-lettered counted over this window
    quality_alert: float = 0.8  # data-quality score below this is flagged
    stage_stall_s: float = 60.0  # /healthz fails when a stage with input waiting is stuck longer
    # logs
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRON.get()
        if environ is None:
            return (init_settings,)
        return (init_settings, _Environ(settings_cls, environ))

    @field_validator("venues", "symbols", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """`binance,kraken` in the environment; a sequence from code."""
        if isinstance(value, str):
            return tuple(x.strip() for x in value.split(",") if x.strip())
        return value

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        """Kafka's own spelling is upper case; `ssl` means `SSL`."""
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator(
        "pg_sslmode", "damping_backend", "damping_dtype", "log_level", "log_format", mode="before"
    )
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("namespace")
    @classmethod
    def _ident(cls, value: str) -> str:
        """It names a PostgreSQL schema and prefixes topics and Redis keys."""
        return check_ident(value) if value else value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `env` (default: the process environment), `overrides` winning.

        Raises `SettingsError` naming each bad variable; reports unknown `SEPSTREAM_*` ones.
        """
        environ = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for name in SECRETS:  # `<NAME>_FILE` (a mounted secret) wins over `<NAME>`
            secret_file = environ.get(PREFIX + name.upper() + "_FILE")
            if secret_file:
                try:
                    values[name] = Path(secret_file).read_text().strip()
                except OSError as exc:
                    key = f"{PREFIX}{name.upper()}_FILE"
                    raise SettingsError(f"{key}={secret_file!r}: {exc.strerror}") from None
        values.update(overrides)
        unknown = unknown_variables(environ)
        if unknown:
            log.warning("unknown settings ignored", variables=unknown)
        token = _ENVIRON.set(environ)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc, environ)) from None
        finally:
            _ENVIRON.reset(token)

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes`, validated like the original."""
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise SettingsError(_describe(exc, {})) from None

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        out = {}
        for name, value in self.model_dump().items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple | list):
                text = ",".join(value)
            else:
                text = str(value)
            out[PREFIX + name.upper()] = text
        return out

    # ---- derived names -------------------------------------------------------------
    def topic(self, name: str) -> str:
        """`md.trades.v1` → `<namespace>.md.trades.v1` under a namespace."""
        return f"{self.namespace}.{name}" if self.namespace else name

    @property
    def pg_schema(self) -> str:
        return self.namespace or "public"

    @property
    def redis_prefix(self) -> str:
        return f"{self.namespace}:md:" if self.namespace else "md:"

    @property
    def group_id(self) -> str:
        return f"{self.app_id}-{self.namespace}" if self.namespace else self.app_id

    @property
    def broker_urls(self) -> str:
        return ";".join(f"kafka://{h.strip()}" for h in self.kafka_bootstrap.split(","))

    def dsn_with_password(self) -> str:
        parts = urlsplit(self.pg_dsn)
        if not self.pg_password or parts.password:
            return self.pg_dsn
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{quote(user)}:{quote(self.pg_password)}@{host}{port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def __repr__(self) -> str:
        return f"Settings({self.redacted()!r})"

    def __str__(self) -> str:
        return repr(self)

    def redacted(self) -> dict[str, Any]:
        """What may be logged: no password, in the DSNs or elsewhere."""
        out = self.model_dump()
        for name in SECRETS:
            out[name] = "***" if out[name] else ""
        out["pg_dsn"] = _redact_url(self.pg_dsn)
        out["redis_url"] = _redact_url(self.redis_url)
        return out


def unknown_variables(environ: Mapping[str, str]) -> dict[str, list[str]]:
    """`SEPSTREAM_*` names that are no setting, each with the closest setting names."""
    known = {PREFIX + name.upper() for name in Settings.model_fields}
    known |= {f"{PREFIX}{name.upper()}_FILE" for name in SECRETS}
    out = {}
    for key in environ:
        if not key.startswith(PREFIX) or key in known or key in NOT_SETTINGS:
            continue
        if key.startswith(NOT_SETTINGS_PREFIXES):
            continue
        out[key] = difflib.get_close_matches(key, sorted(known), n=2, cutoff=0.8)
    return out


def _describe(exc: ValidationError, environ: Mapping[str, str]) -> str:
    """One line per error: the variable, the value given (secrets masked), what is wrong."""
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "?"
        key = PREFIX + name.upper()
        value: Any = environ.get(key, err.get("input"))
        shown = "***" if name in SECRETS else repr(value)
        lines.append(f"{key}={shown}: {err['msg']}")
    return "; ".join(lines)


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
