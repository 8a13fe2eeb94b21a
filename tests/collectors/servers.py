"""Local stand-ins for the venues: scripted websocket and chunked-HTTP servers on 127.0.0.1.

Each connection plays the next script: send frames, drop the connection abruptly, close it,
or go silent (keep the connection open, answer pings, send nothing) until released.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

Step = tuple[str, Any]  # ("send", str | bytes) | ("drop", None) | ("silent", None) | ("end", None)


@dataclass
class ScriptedServer:
    scripts: list[list[Step]]
    connections: int = 0
    paths: list[str] = field(default_factory=list)
    received: list[list[str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    played: asyncio.Event = field(default_factory=asyncio.Event)  # the last script is through
    release: asyncio.Event = field(default_factory=asyncio.Event)  # ends silences at teardown
    expect_from_client: int = 0  # messages (subscriptions) to wait for before playing

    def _script(self, request: web.Request) -> list[Step]:
        i = self.connections
        self.connections += 1
        self.paths.append(request.path_qs)
        self.headers.append(dict(request.headers))
        return self.scripts[i] if i < len(self.scripts) else [("silent", None)]

    def _finished(self, script: list[Step]) -> None:
        if self.connections >= len(self.scripts) and script is self.scripts[-1]:
            self.played.set()

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        script = self._script(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        received: list[str] = []
        self.received.append(received)

        async def read() -> None:  # also answers the client's pings
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    received.append(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    received.append(msg.data.decode())

        reader = asyncio.create_task(read())
        try:
            for _ in range(200):
                if len(received) >= self.expect_from_client or reader.done():
                    break
                await asyncio.sleep(0.01)
            for action, arg in script:
                if action == "send":
                    if isinstance(arg, bytes):
                        await ws.send_bytes(arg)
                    else:
                        await ws.send_str(arg)
                elif action == "drop":
                    self._finished(script)
                    assert request.transport is not None
                    request.transport.close()  # no close frame: the connection just dies
                    return ws
                elif action == "silent":
                    self._finished(script)
                    released = asyncio.create_task(self.release.wait())
                    await asyncio.wait({reader, released}, return_when=asyncio.FIRST_COMPLETED)
                    released.cancel()
                    return ws
            self._finished(script)
            await ws.close()
            return ws
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def lines(self, request: web.Request) -> web.StreamResponse:
        """Chunked HTTP, one JSON document per line (OANDA's pricing stream)."""
        script = self._script(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for action, arg in script:
            if action == "send":
                await resp.write(arg if isinstance(arg, bytes) else arg.encode())
            elif action == "silent":
                self._finished(script)
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await self.release.wait()
                return resp
        self._finished(script)
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def serve(server: ScriptedServer, routes: list[web.RouteDef]) -> AsyncIterator[int]:
    """Run the app on 127.0.0.1 on a free port; yields the port."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield port
    finally:
        server.release.set()
        await runner.cleanup()
