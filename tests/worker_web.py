"""The worker's HTTP routes served in the test's own process, without Kafka: `streams.ops.web`
registered on a Faust app exactly as `sepstream worker` does it, on an ephemeral port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web as aioweb
from aiohttp.test_utils import TestClient, TestServer
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from streams.app import new_faust_app
from streams.ops import web
from streams.settings import Settings

type WebClient = TestClient[aioweb.Request, aioweb.Application]


@asynccontextmanager
async def worker_web(settings: Settings) -> AsyncIterator[WebClient]:
    """A client of the routes; the read path's pools are closed as at worker shutdown."""
    app = new_faust_app(settings)
    web.register(app, settings)
    server = app.web
    assert isinstance(server, AiohttpWeb)
    server.init_server()  # what the worker's web service does when it starts
    client: WebClient = TestClient(TestServer(server.web_app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await app.on_before_shutdown.send()
