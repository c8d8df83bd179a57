"""The websocket side: who is connected, and delivering events to them in order.

Events are produced on the queue's worker thread and delivered on the event loop. Each
socket has its own outbox and sender task, so messages reach a client in the order they
were published even when a slow client lags behind (the others are not held up by it).

Message format (all JSON text frames): `{"type": ..., "data": {...}}`. Step previews travel
inside `progress` messages as a `data:image/jpeg;base64,...` URL in `data.preview`, so a
browser can put them straight into an `<img>` without a binary frame parser.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from graph_runtime.server.responses import dumps

Message = dict[str, Any]
OUTBOX_LIMIT = 1000  # messages a stalled client may fall behind before being dropped


class Hub:
    """Connected websocket clients keyed by `client_id`."""

    def __init__(self) -> None:
        self._clients: dict[str, set[asyncio.Queue[Message | None]]] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.greeting: Callable[[], Message] | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, message: Message, client_id: str | None = None) -> None:
        """Deliver to `client_id`'s sockets, or to everybody when it is None. Loop thread."""
        if client_id is None:
            targets = [box for boxes in self._clients.values() for box in boxes]
        else:
            targets = list(self._clients.get(client_id, ()))
        for box in targets:
            if box.qsize() < OUTBOX_LIMIT:
                box.put_nowait(message)

    def publish_threadsafe(self, message: Message, client_id: str | None = None) -> None:
        """`publish` from any thread (the queue worker)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self.publish, message, client_id)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """`GET /ws?client_id=...`: register, greet with the queue status, stream events."""
        client_id = request.query.get("client_id") or request.query.get("clientId") or ""
        client_id = client_id[:128]
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024)
        await ws.prepare(request)
        box: asyncio.Queue[Message | None] = asyncio.Queue()
        self._clients.setdefault(client_id, set()).add(box)
        self._sockets.add(ws)
        if self.greeting is not None:
            box.put_nowait(self.greeting())
        sender = asyncio.create_task(self._send_loop(ws, box))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
                # Clients have nothing to say over the socket; everything goes over REST.
        finally:
            self._sockets.discard(ws)
            boxes = self._clients.get(client_id)
            if boxes is not None:
                boxes.discard(box)
                if not boxes:
                    self._clients.pop(client_id, None)
            box.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        return ws

    @staticmethod
    async def _send_loop(ws: web.WebSocketResponse, box: asyncio.Queue[Message | None]) -> None:
        while True:
            message = await box.get()
            if message is None or ws.closed:
                return
            try:
                await ws.send_json(message, dumps=dumps)
            except (ConnectionError, RuntimeError):
                return

    async def close_all(self) -> None:
        for boxes in list(self._clients.values()):
            for box in boxes:
                box.put_nowait(None)
        for ws in list(self._sockets):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=1001, message=b"server shutting down")
