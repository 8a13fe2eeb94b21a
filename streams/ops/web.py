"""HTTP routes on the worker's Faust web server."""

from __future__ import annotations

from importlib.resources import files
from typing import Any, Final

import faust
import orjson
from faust.web import Request, Response, View
from faust.web.base import BlueprintManager
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.ops import health
from streams.ops.consumer_lag import monitor_of
from streams.ops.progress import progress_of
from streams.query.bars import BarReader, http_bars
from streams.settings import Settings

# Faust's own pages: /router (cluster topology), /table (table contents by key), / and
# /assignment (sensor counters, partition assignment), /graph, /performance. None is needed
# (no @table_route), all describe internals, and the worker's web has no authentication.
FAUST_PAGE_SETTINGS: Final = (
    "web_router_enabled",
    "web_tables_enabled",
    "web_stats_enabled",
    "web_graph_enabled",
    "web_metrics_enabled",
)


def disable_faust_pages(app: faust.App) -> None:
    """Serve none of Faust's built-in pages, only the routes registered here.

    Each has its own setting (faust-streaming >= 0.15), read when `app.web` is made and
    turned off here if it is not made yet; Faust serves its `{"status": "OK"}` index at `/`
    whatever they say, so the web's blueprint list, which holds only built-ins (ours are
    views), is emptied too: it is applied when the server starts.
    """
    if "web" not in vars(app):  # a cached property: the settings are still unread
        for name in FAUST_PAGE_SETTINGS:
            setattr(app.conf, name, False)
    app.web.blueprints = BlueprintManager()


def register(app: faust.App, settings: Settings) -> None:
    disable_faust_pages(app)

    @app.page("/metrics")
    async def metrics(self: View, request: Request) -> Response:
        """Prometheus exposition of this worker's counters and histograms."""
        # as a header: aiohttp rejects a content_type argument that carries a charset
        return self.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(self: View, request: Request) -> Response:
        """503 when a stage with input waiting has not finished a take for
        `stage_stall_s` (a poison loop, a store away): the worker is up but not advancing."""
        stages = [p.as_dict(settings.stage_stall_s) for p in progress_of(app).values()]
        stalled = [s["stage"] for s in stages if s["stalled"]]
        body: dict[str, Any] = {
            "ok": not stalled,
            "namespace": settings.namespace or None,
            "stalled": stalled,
            "stages": stages,
        }
        return self.json(body, status=503 if stalled else 200)

    dashboard_html = files("streams.ops").joinpath("dashboard.html").read_text()

    @app.page("/lag")
    async def lag(self: View, request: Request) -> Response:
        """The lag monitor's latest snapshot and per-group history (agents/lag_monitor.py)."""
        monitor = monitor_of(app)
        doc = monitor.as_dict() if monitor else {"latest": None, "history": []}
        doc["interval_s"] = settings.lag_interval_s
        return self.bytes(orjson.dumps(doc), content_type="application/json")

    @app.page("/freshness")
    async def freshness(self: View, request: Request) -> Response:
        """Seconds since the last tick per instrument (streams.ops.health), read now."""
        rows = await health.freshness(settings)
        doc = {
            "namespace": settings.namespace or None,
            "alert_after_s": settings.freshness_alert_s,
            "instruments": [f.as_dict() for f in rows],
        }
        return self.bytes(orjson.dumps(doc), content_type="application/json")

    @app.page("/dashboard")
    async def dashboard(self: View, request: Request) -> Response:
        """One self-contained page charting /lag and /freshness (no external assets)."""
        return self.html(dashboard_html)

    # Pools opened at the first request, shared by all. Requests are anonymous: the venue
    # REST tier only when SEPSTREAM_READ_HTTP_REST allows it (streams.query.bars).
    reader = BarReader(settings, allow_rest=settings.read_http_rest)

    @app.page("/bars")
    async def bars(self: View, request: Request) -> Response:
        """Bars (streams.query.bars): ?symbol=&venue=&tf=1m&limit=500&forming=0."""
        status, doc = await http_bars(reader, request.query)
        return self.bytes(orjson.dumps(doc), content_type="application/json", status=status)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types receivers oddly
    async def close_reader(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await reader.close()
