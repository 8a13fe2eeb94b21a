"""How far each stage and sink of a worker has got, for `/healthz` (streams/ops/web.py).

The stage runner (agents/stage.py) and the sinks (agents/sinks.py) record each finished
micro-batch here; a stage with input waiting that has not finished one for
`STAGE_STALL_S` is stalled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import faust


@dataclass
class StageProgress:
    """When a stage last finished a take, and whether it is inside one, for /healthz."""

    name: str
    queued: Callable[[], int] = lambda: 0
    last_done: float = field(default_factory=time.monotonic)
    busy_since: float | None = None
    takes: int = 0

    def done(self) -> None:
        """A take finished: inputs acked."""
        self.busy_since = None
        self.last_done = time.monotonic()
        self.takes += 1

    def stalled(self, stall_s: float, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self.busy_since is not None and now - self.busy_since > stall_s:
            return True  # stuck inside a take (a publish or a write retried for ever)
        return self.queued() > 0 and now - self.last_done > stall_s

    def as_dict(self, stall_s: float) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "stage": self.name,
            "stalled": self.stalled(stall_s, now),
            "since_last_take_s": round(now - self.last_done, 3),
            "busy_s": None if self.busy_since is None else round(now - self.busy_since, 3),
            "queued": self.queued(),
            "takes": self.takes,
        }


_PROGRESS: WeakKeyDictionary[faust.App, dict[str, StageProgress]] = WeakKeyDictionary()


def progress_of(app: faust.App) -> dict[str, StageProgress]:
    """Every stage and sink registered on `app`, by name."""
    return _PROGRESS.setdefault(app, {})


def track(app: faust.App, name: str) -> StageProgress:
    progress = progress_of(app)[name] = StageProgress(name)
    return progress
