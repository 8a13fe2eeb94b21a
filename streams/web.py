"""HTTP routes on the worker's Faust web server."""

from __future__ import annotations

from typing import Any

import faust
import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.settings import Settings


def register(app: faust.App, settings: Settings) -> None:
    @app.page("/metrics")
    async def metrics(self: View, request: Request) -> Response:
        """Prometheus exposition of this worker's counters and histograms."""
        # as a header: aiohttp rejects a content_type argument that carries a charset
        return self.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(self: View, request: Request) -> Response:
        body: dict[str, Any] = {"ok": True, "namespace": settings.namespace or None}
        return self.json(body)

    from importlib.resources import files

    from streams import health
    from streams.lag import monitor_of

    dashboard_html = files("streams").joinpath("dashboard.html").read_text()

    @app.page("/lag")
    async def lag(self: View, request: Request) -> Response:
        """The lag monitor's latest snapshot and per-group history (agents/lag.py)."""
        monitor = monitor_of(app)
        doc = monitor.as_dict() if monitor else {"latest": None, "history": []}
        doc["interval_s"] = settings.lag_interval_s
        return self.bytes(orjson.dumps(doc), content_type="application/json")

    @app.page("/freshness")
    async def freshness(self: View, request: Request) -> Response:
        """Seconds since the last tick per instrument (streams.health), read now."""
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

    from streams.readpath import BarReader, http_bars

    reader = BarReader(settings)  # pools opened at the first request, shared by all

    @app.page("/bars")
    async def bars(self: View, request: Request) -> Response:
        """Bars via the read path: ?symbol=&venue=&tf=1m&limit=500&forming=0 (streams.readpath)."""
        status, doc = await http_bars(reader, request.query)
        return self.bytes(orjson.dumps(doc), content_type="application/json", status=status)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # mode types receivers oddly
    async def close_reader(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        await reader.close()
