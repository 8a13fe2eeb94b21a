"""Faust's built-in pages are not served by the worker's web server; only its own routes are.

(`tests/security/test_tls_pipeline.py` asks a real `sepstream worker` the same.)
"""

from __future__ import annotations

from streams.app import new_faust_app
from streams.ops.web import FAUST_PAGE_SETTINGS, disable_faust_pages
from streams.settings import Settings
from tests.worker_web import worker_web

# Every page faust-streaming registers on its own (faust/web/base.py blueprints): the table
# router, table contents by key, sensor statistics, partition assignment, the service graph,
# the performance metrics and the production index.
FAUST_PAGES = (
    "/",
    "/router/",
    "/router/topics",
    "/router/t/",
    "/router/t/k/",
    "/table/",
    "/table/t/",
    "/table/t/k/",
    "/assignment/",
    "/graph/",
    "/performance/",
)


async def test_faust_pages_are_not_served(settings: Settings) -> None:
    async with worker_web(settings) as client:
        for path in FAUST_PAGES:
            resp = await client.get(path)
            assert resp.status == 404, path
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/metrics")).status == 200


def test_what_is_turned_off(settings: Settings) -> None:
    """A plain Faust app would mount /router, /table and /; after `disable_faust_pages`,
    made before or after `app.web`, nothing of Faust's is mounted."""
    plain = new_faust_app(settings)
    assert {"/router", "/table", ""} <= {prefix for prefix, _ in plain.web.blueprints._enabled}
    disable_faust_pages(plain)  # web made already: its blueprints are dropped
    assert not plain.web.blueprints._enabled
    fresh = new_faust_app(settings)
    disable_faust_pages(fresh)  # web not made yet: the settings are turned off first
    assert all(getattr(fresh.conf, name) is False for name in FAUST_PAGE_SETTINGS)
    assert not fresh.web.blueprints._enabled
