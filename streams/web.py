"""HTTP routes on the worker's Faust web server."""

from __future__ import annotations

from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.settings import Settings


def register(app: faust.App, settings: Settings) -> None:
    @app.page("/metrics")
    async def metrics(self: View, request: Request) -> Response:
        """Prometheus exposition of this worker's counters and histograms."""
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST)

    @app.page("/healthz")
    async def healthz(self: View, request: Request) -> Response:
        body: dict[str, Any] = {"ok": True, "namespace": settings.namespace or None}
        return self.json(body)
