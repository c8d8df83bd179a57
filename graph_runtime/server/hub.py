"""The websocket side: who is connected, and delivering events to them in order.

Events are produced on the queue's worker thread and delivered on the event loop. Each
socket has its own outbox and sender task, so messages reach a client in the order they
were published even when a slow client lags behind (the others are not held up by it).

A client that falls `outbox_limit` messages behind is not starved silently: its socket is
closed with code 4008 (`CLOSE_TOO_SLOW`) and a reason, so it knows events were lost and
can reconnect and read the queue and history to catch up. A `client_id` follows one rule
everywhere (`check_client_id`); a socket asking for a bad one is closed with code 1008.

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
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from graph_runtime.server.responses import dumps

Message = dict[str, Any]
OUTBOX_LIMIT = 1000  # messages a client may fall behind before its socket is closed
NOODLE = "noodle"
MAX_CLIENT_ID = 128
CLIENT_ID = re.compile(rf"[A-Za-z0-9_.:~-]{{1,{MAX_CLIENT_ID}}}")
CLOSE_TOO_SLOW = 4008
CLOSE_BAD_CLIENT_ID = int(WSCloseCode.POLICY_VIOLATION)  # 1008
CLOSE_TIMEOUT_S = 5.0


class InvalidClientId(ValueError):
    """A client id that breaks the rule; the message says which part."""


def check_client_id(value: Any) -> str | None:
    """The one rule for a client id (our /api/prompt, ComfyUI's /prompt, the websocket):
    absent or empty means none; otherwise a string of 1 to 128 letters, digits and
    `_ . : ~ -` (uuids, hex ids). Anything else is refused, never truncated or ignored,
    because a client whose id was changed would silently hear nothing."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidClientId(f"client_id must be a string, got {type(value).__name__}")
    if len(value) > MAX_CLIENT_ID:
        raise InvalidClientId(f"client_id is {len(value)} characters long; at most "
                              f"{MAX_CLIENT_ID} are allowed")
    if CLIENT_ID.fullmatch(value) is None:
        raise InvalidClientId("client_id may only contain letters, digits and _ . : ~ -")
    return value


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


@dataclass(eq=False)
class _Client:
    """One open socket: its outbox, the task draining it, and whether it was evicted."""

    key: tuple[str, str]
    ws: web.WebSocketResponse
    box: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    sender: asyncio.Task[None] | None = None
    evicted: bool = False


class Hub:
    """Connected websocket clients keyed by dialect and `client_id`."""

    def __init__(self, outbox_limit: int = OUTBOX_LIMIT) -> None:
        self.outbox_limit = outbox_limit
        self._clients: dict[tuple[str, str], set[_Client]] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.greeting: Callable[[], Message] | None = None
        self.evictions = 0
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
            targets = [c for (name, _), clients in self._clients.items() if name == dialect
                       for c in clients]
        else:
            targets = list(self._clients.get((dialect, client_id), ()))
        for client in targets:
            self._deliver(client, message)

    def _deliver(self, client: _Client, message: Message) -> None:
        if client.evicted:
            return
        if client.box.qsize() >= self.outbox_limit:
            self._evict(client)
            return
        client.box.put_nowait(message)

    def _evict(self, client: _Client) -> None:
        """Stop feeding a client that fell too far behind and close its socket with a code
        saying so (its unsent messages are dropped; it reconnects to catch up)."""
        client.evicted = True
        self.evictions += 1
        self._forget(client)
        while not client.box.empty():
            client.box.get_nowait()
        task = asyncio.ensure_future(self._close_slow(client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_slow(self, client: _Client) -> None:
        if client.sender is not None:
            client.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await client.sender
        reason = f"client fell more than {self.outbox_limit} messages behind"
        # A client that reads nothing may never take the close frame: give up after a while.
        with contextlib.suppress(ConnectionError, RuntimeError, asyncio.TimeoutError):
            await asyncio.wait_for(client.ws.close(code=CLOSE_TOO_SLOW,
                                                   message=reason.encode()), CLOSE_TIMEOUT_S)

    def _forget(self, client: _Client) -> None:
        clients = self._clients.get(client.key)
        if clients is not None:
            clients.discard(client)
            if not clients:
                self._clients.pop(client.key, None)

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
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024)
        try:
            check_client_id(request.query.get("client_id") or request.query.get("clientId"))
        except InvalidClientId as exc:
            await ws.prepare(request)
            await ws.close(code=CLOSE_BAD_CLIENT_ID, message=str(exc).encode())
            return ws
        dialect = self._dialect_for(request)
        client_id = dialect.client_id(request)
        await ws.prepare(request)
        client = _Client((dialect.name, client_id), ws)
        self._clients.setdefault(client.key, set()).add(client)
        self._sockets.add(ws)
        for message in dialect.greeting(client_id):
            self._deliver(client, message)
        client.sender = asyncio.create_task(self._send_loop(ws, client.box))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
                if msg.type == WSMsgType.TEXT:
                    for answer in dialect.reply(client_id, _parse(msg.data)):
                        self._deliver(client, answer)
        finally:
            self._sockets.discard(ws)
            self._forget(client)
            if not client.evicted:
                client.box.put_nowait(None)
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await client.sender
        return ws

    def listening(self, dialect: str = NOODLE) -> bool:
        """Whether a socket of `dialect` is open (asked from the queue's worker thread):
        step previews are made only while one is, since only ours carry them."""
        return any(name == dialect for name, _ in tuple(self._clients))

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
        for clients in list(self._clients.values()):
            for client in clients:
                client.box.put_nowait(None)
        for ws in list(self._sockets):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=1001, message=b"server shutting down")


def _parse(text: str) -> Any:
    """A client's text frame as JSON, or None when it is not JSON (it is then ignored)."""
    try:
        return json.loads(text)
    except ValueError:
        return None
