"""The websocket side: who is connected, and delivering events to them in order.

Events are produced on the queue's worker thread and delivered on the event loop. Each
socket has its own outbox and sender task, so messages reach a client in the order they
were published even when a slow client lags behind (the others are not held up by it).

Message format (all JSON text frames): `{"type": ..., "data": {...}}`. Step previews travel
inside `progress` messages as a `data:image/jpeg;base64,...` URL in `data.preview`, so a
browser can put them straight into an `<img>` without a binary frame parser.

One endpoint speaks several protocols ("dialects"): ours, and any another API registers
(ComfyUI's, see `comfy`). A socket picks its dialect when it connects and hears only that
dialect's messages; ours is chosen by the `client_id` query parameter, and when no other
dialect claims a socket it gets ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from graph_runtime.server.responses import dumps

Message = dict[str, Any]
OUTBOX_LIMIT = 1000  # messages a stalled client may fall behind before being dropped
NOODLE = "noodle"
MAX_CLIENT_ID = 128


@dataclass
class Dialect:
    """A websocket protocol: which sockets are its (`claims`), the id a socket is known by
    (`client_id`, which may invent one), what it is told on connecting (`greeting`), and
    the answers to what it sends (`reply`; most clients send nothing)."""

    name: str
    claims: Callable[[web.Request], bool]
    client_id: Callable[[web.Request], str]
    greeting: Callable[[str], list[Message]]
    reply: Callable[[str, Any], list[Message]] = lambda sid, data: []


class Hub:
    """Connected websocket clients keyed by dialect and `client_id`."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], set[asyncio.Queue[Message | None]]] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.greeting: Callable[[], Message] | None = None
        self._others: list[Dialect] = []
        self._ours = Dialect(
            NOODLE, claims=lambda request: "client_id" in request.query,
            client_id=lambda request: (request.query.get("client_id")
                                       or request.query.get("clientId") or ""),
            greeting=lambda sid: [self.greeting()] if self.greeting is not None else [])

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def add_dialect(self, dialect: Dialect) -> None:
        """Let another protocol claim sockets that do not ask for ours."""
        self._others.append(dialect)

    def _dialect_for(self, request: web.Request) -> Dialect:
        if self._ours.claims(request):
            return self._ours
        return next((d for d in self._others if d.claims(request)), self._ours)

    def publish(self, message: Message, client_id: str | None = None,
                dialect: str = NOODLE) -> None:
        """Deliver to `client_id`'s sockets of `dialect`, or to all of that dialect's when
        it is None. Loop thread."""
        if client_id is None:
            targets = [box for (name, _), boxes in self._clients.items() if name == dialect
                       for box in boxes]
        else:
            targets = list(self._clients.get((dialect, client_id), ()))
        for box in targets:
            if box.qsize() < OUTBOX_LIMIT:
                box.put_nowait(message)

    def publish_threadsafe(self, message: Message, client_id: str | None = None,
                           dialect: str = NOODLE) -> None:
        """`publish` from any thread (the queue worker)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self.publish, message, client_id, dialect)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """`GET /ws?client_id=...`: register, greet with the queue status, stream events."""
        dialect = self._dialect_for(request)
        client_id = dialect.client_id(request)[:MAX_CLIENT_ID]
        key = (dialect.name, client_id)
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024)
        await ws.prepare(request)
        box: asyncio.Queue[Message | None] = asyncio.Queue()
        self._clients.setdefault(key, set()).add(box)
        self._sockets.add(ws)
        for message in dialect.greeting(client_id):
            box.put_nowait(message)
        sender = asyncio.create_task(self._send_loop(ws, box))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
                if msg.type == WSMsgType.TEXT:
                    for answer in dialect.reply(client_id, _parse(msg.data)):
                        box.put_nowait(answer)
        finally:
            self._sockets.discard(ws)
            boxes = self._clients.get(key)
            if boxes is not None:
                boxes.discard(box)
                if not boxes:
                    self._clients.pop(key, None)
            box.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
        return ws

    def connected(self, dialect: str = NOODLE) -> list[str]:
        """The client ids with a socket open in `dialect` (for tests and diagnostics)."""
        return sorted(cid for (name, cid) in self._clients if name == dialect)

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


def _parse(text: str) -> Any:
    """A client's text frame as JSON, or None when it is not JSON (it is then ignored)."""
    try:
        return json.loads(text)
    except ValueError:
        return None
