"""Local stand-ins for the venues: scripted websocket and chunked-HTTP servers on 127.0.0.1.

Each connection of a `ScriptedServer` plays the next script: send frames, drop the
connection abruptly, close it, or go silent (keep the connection open, answer pings, send
nothing) until released. A `TickingVenue` instead streams trades for whatever is subscribed
and honours (un)subscribe requests, for the runtime-subscription tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
async def serve(
    server: ScriptedServer | TickingVenue, routes: list[web.RouteDef]
) -> AsyncIterator[int]:
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


@dataclass
class TickingVenue:
    """A venue stand-in that honours subscriptions: every `every_s` it sends one trade per
    subscribed symbol (ids 1, 2, ... per symbol), and applies subscribe / unsubscribe
    requests the way the real venue documents them. An unsubscribe takes effect `lag_s`
    late, as frames already in flight at a real venue still arrive.

    `venue` is binance (symbols in the URL plus SUBSCRIBE/UNSUBSCRIBE), coinbase and kraken
    (subscribe/unsubscribe messages) or oanda (instruments in the URL of a line stream).
    """

    venue: str
    every_s: float = 0.02
    lag_s: float = 0.2
    connections: int = 0
    paths: list[str] = field(default_factory=list)
    requests: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (time, doc)
    subscribed: set[str] = field(default_factory=set)  # venue spellings, right now
    sent: dict[str, int] = field(default_factory=dict)  # last trade id per venue symbol
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def _initial(self, request: web.Request) -> set[str]:
        if self.venue == "binance":
            streams = request.query.get("streams", "")
            return {s.split("@")[0].upper() for s in streams.split("/") if s.endswith("@trade")}
        if self.venue == "oanda":
            return set(filter(None, request.query.get("instruments", "").split(",")))
        return set()

    def _trade(self, symbol: str) -> str:
        trade_id = self.sent[symbol] = self.sent.get(symbol, 0) + 1
        now_ms = time.time_ns() // 1_000_000
        price = f"{100 + trade_id % 50}.25"
        stamp = datetime.fromtimestamp(now_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if self.venue == "binance":
            data = {"e": "trade", "E": now_ms, "s": symbol, "t": trade_id, "p": price,
                    "q": "0.5", "T": now_ms, "m": trade_id % 2 == 0, "M": True}  # fmt: skip
            return json.dumps({"stream": f"{symbol.lower()}@trade", "data": data})
        if self.venue == "coinbase":
            return json.dumps(
                {
                    "type": "match",
                    "trade_id": trade_id,
                    "maker_order_id": "m",
                    "taker_order_id": "t",
                    "side": "buy",
                    "size": "0.5",
                    "price": price,
                    "product_id": symbol,
                    "sequence": trade_id,
                    "time": stamp,
                }
            )
        if self.venue == "kraken":
            item = {"symbol": symbol, "side": "buy", "price": float(price), "qty": 0.5,
                    "ord_type": "market", "trade_id": trade_id, "timestamp": stamp}  # fmt: skip
            return json.dumps({"channel": "trade", "type": "update", "data": [item]})
        bid = {"price": price, "liquidity": 1000000}
        return json.dumps(
            {
                "type": "PRICE",
                "time": stamp,
                "instrument": symbol,
                "bids": [bid],
                "asks": [bid],
                "status": "tradeable",
                "tradeable": True,
            }
        )

    def _apply(self, doc: dict[str, Any]) -> tuple[str, list[str], str | None]:
        """(subscribe | unsubscribe, venue symbols, reply) of one client request."""
        if self.venue == "binance":
            method = str(doc.get("method", "")).lower()
            names = [p.split("@")[0].upper() for p in doc.get("params", []) if p.endswith("@trade")]
            return method, names, json.dumps({"result": None, "id": doc.get("id")})
        if self.venue == "coinbase":
            method = str(doc.get("type"))
            reply = {"type": "subscriptions", "channels": [{"name": "matches", "product_ids": []}]}
            return method, list(doc.get("product_ids", [])), json.dumps(reply)
        params = doc.get("params", {})
        method = str(doc.get("method"))
        names = list(params.get("symbol", [])) if params.get("channel") == "trade" else []
        ack = {"method": method, "result": {"channel": params.get("channel")}, "success": True}
        return method, names, json.dumps(ack)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        self.paths.append(request.path_qs)
        self.subscribed = self._initial(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        pending: set[asyncio.Task[None]] = set()

        async def drop_later(names: list[str]) -> None:
            await asyncio.sleep(self.lag_s)
            self.subscribed -= set(names)

        async def read() -> None:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:  # venues take JSON requests as text only
                    raise AssertionError(f"a {msg.type!r} frame from the collector")
                doc = json.loads(msg.data)
                self.requests.append((time.time_ns(), doc))
                method, names, reply = self._apply(doc)
                if method == "subscribe":
                    self.subscribed |= set(names)
                elif method == "unsubscribe":
                    task = asyncio.create_task(drop_later(names))
                    pending.add(task)
                if reply is not None:
                    await ws.send_str(reply)

        reader = asyncio.create_task(read())
        try:
            while not reader.done() and not self.release.is_set():
                for symbol in sorted(self.subscribed):
                    await ws.send_str(self._trade(symbol))
                await asyncio.sleep(self.every_s)
        except ConnectionError:
            pass
        finally:
            for task in (reader, *pending):
                task.cancel()
            await asyncio.gather(reader, *pending, return_exceptions=True)
        await ws.close()
        return ws

    async def lines(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        self.paths.append(request.path_qs)
        instruments = self._initial(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while not self.release.is_set():
                for symbol in sorted(instruments):
                    await resp.write((self._trade(symbol) + "\n").encode())
                await asyncio.sleep(self.every_s)
        return resp

    def routes(self) -> list[web.RouteDef]:
        if self.venue == "oanda":
            return [web.get("/v3/accounts/{account}/pricing/stream", self.lines)]
        return [web.get("/{tail:.*}", self.websocket)]
