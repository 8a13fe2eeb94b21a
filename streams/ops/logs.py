"""structlog set-up: JSON lines in production, readable output in a terminal; always stderr.

stdout stays free for `--json` documents. Faust/aiokafka log through stdlib logging, which is
routed through the same renderer so one process writes one format. Every line, ours or a
library's, passes `redact_secrets` last: passwords never reach the log (docs/OPERATIONS.md).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

# Keys whose values are secrets wherever they appear in an event (nested too).
_SECRET_KEY: Final = re.compile(r"pass(word|wd)?|secret|token|credential|sasl_plain", re.I)
# A password inside a URL's userinfo: scheme://user:PASSWORD@host
# (greedy up to the last "@" before the path: the password itself may contain "@")
_URL_PASSWORD: Final = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^\s/]+@", re.I)
# libpq key=value strings and command lines: password=PASSWORD, --password PASSWORD
_KV_PASSWORD: Final = re.compile(
    r"(?P<head>\bpass(?:word|wd)?\s*[=:]\s*|--password\s+)[^\s,;&'\"]+", re.I
)
MASK: Final = "***"


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        value = _URL_PASSWORD.sub(r"\g<head>" + MASK + "@", value)
        return _KV_PASSWORD.sub(r"\g<head>" + MASK, value)
    if isinstance(value, dict):
        return {k: MASK if _is_secret(k, v) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def _is_secret(key: object, value: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key)) and bool(value)


def redact_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: masks secret-named keys and passwords inside URLs and key=value
    text (exception messages included, so it runs after `format_exc_info`)."""
    for key, value in list(event.items()):
        event[key] = MASK if _is_secret(key, value) else _scrub(value)
    return event


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless we are debugging.
    for noisy in ("aiokafka", "faust", "mode", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
