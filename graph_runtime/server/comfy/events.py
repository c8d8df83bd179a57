"""ComfyUI's websocket messages, made from our queue's and executor's events.

ComfyUI clients follow a prompt by these messages and decide from them when it is done, so
both the content and the order are part of the protocol:

    status (queued) · status (running) · execution_start · execution_cached {nodes}
    per node run: executing {node} · progress {value, max}... · executed {output}
    per cached output node: executed
    -- history entry committed to the state database --
    execution_success | execution_error | execution_interrupted
    status (queue_remaining one less) · executing {node: null}

ComfyUI writes its history entry just after the final `execution_*` message; clients that
read the history on that message then race the write (comfy-toolkit retries for this).
Sending the message once the entry is written keeps ComfyUI's order of messages and leaves
no window in which a finished prompt has no history.

Routing is ComfyUI's: `status` goes to every ComfyUI socket; the rest to the socket of the
prompt's `client_id`. Without a client id, only `progress` and `execution_interrupted` are
broadcast and the other per-prompt messages are not sent at all. The `execution_*`
messages are also kept, with their timestamps, for the history entry's status.

No binary preview frames are sent: several clients take every binary frame for a result
image, and ComfyUI itself sends none unless previews are switched on.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from graph_runtime.server.comfy.shapes import comfy_meta
from graph_runtime.server.hub import Dialect
from graph_runtime.server.prompt_queue import PromptQueue, QueueItem

DIALECT = "comfyui"
Message = dict[str, Any]
Send = Callable[[Message, "str | None"], None]


def message(kind: str, data: dict[str, Any]) -> Message:
    return {"type": kind, "data": data}


def _timestamp() -> int:
    return int(time.time() * 1000)


def _traceback_lines(text: Any) -> list[str]:
    if isinstance(text, list):
        return [str(line) for line in text]
    return str(text or "").splitlines(keepends=True)


class _RunState:
    """What one running prompt has done so far (for errors and late joiners)."""

    def __init__(self) -> None:
        self.executed: list[str] = []
        self.outputs: list[str] = []
        self.current: str | None = None
        self.final: list[tuple[Message, str | None]] = []  # sent once the history is written


class ComfyEvents:
    """A queue listener that speaks ComfyUI's websocket protocol through `send`."""

    def __init__(self, queue: PromptQueue, send: Send, features: dict[str, Any]) -> None:
        self.queue, self.send, self.features = queue, send, features
        self._runs: dict[str, _RunState] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the dialect
    def dialect(self) -> Dialect:
        """Sockets that do not ask for our protocol: `?clientId=` (or no id at all)."""
        return Dialect(DIALECT, claims=lambda request: True, client_id=self._sid,
                       greeting=self.greeting, reply=self.reply)

    @staticmethod
    def _sid(request: web.Request) -> str:
        return request.query.get("clientId") or uuid.uuid4().hex

    def status_message(self, sid: str | None = None) -> Message:
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining":
                                                         self.queue.remaining()}}}
        if sid is not None:
            data["sid"] = sid
        return message("status", data)

    def greeting(self, sid: str) -> list[Message]:
        """The queue status with the socket's id; and, when a prompt of this client is
        running, the node it is at (so a reconnecting client picks up where it was)."""
        out = [self.status_message(sid)]
        running, _ = self.queue.items()
        with self._lock:
            for item in running:
                state = self._runs.get(item.prompt_id)
                if item.client_id == sid and state is not None and state.current is not None:
                    out.append(message("executing", {"node": state.current}))
        return out

    def reply(self, sid: str, data: Any) -> list[Message]:
        """A client announcing its features is told ours; anything else is ignored."""
        if isinstance(data, dict) and data.get("type") == "feature_flags":
            return [message("feature_flags", dict(self.features))]
        return []

    # ------------------------------------------------------------------ queue listener
    def queue_changed(self) -> None:
        self.send(self.status_message(), None)

    def _to_client(self, item: QueueItem, msg: Message) -> None:
        if item.client_id is not None:
            self.send(msg, item.client_id)

    def _log(self, item: QueueItem, kind: str, data: dict[str, Any],
             broadcast: bool = False, final: bool = False) -> None:
        """An `execution_*` message: kept for the history, sent to the client (a `final`
        one after the history entry is written)."""
        data = {**data, "prompt_id": item.prompt_id, "timestamp": _timestamp()}
        comfy_meta(item).setdefault("messages", []).append([kind, data])
        if item.client_id is None and not broadcast:
            return
        if final:
            self._state(item).final.append((message(kind, data), item.client_id))
        else:
            self.send(message(kind, data), item.client_id)

    def _state(self, item: QueueItem) -> _RunState:
        with self._lock:
            return self._runs.setdefault(item.prompt_id, _RunState())

    def run_event(self, item: QueueItem, event: dict[str, Any]) -> None:
        kind, pid = event["type"], item.prompt_id
        state = self._state(item)
        node = event.get("node")
        if kind == "run_started":
            self._log(item, "execution_start", {})
            self._log(item, "execution_cached", {"nodes": list(event.get("cached", []))})
        elif kind == "node_started":
            state.current = node
            self._to_client(item, message("executing", {"node": node, "display_node": node,
                                                        "prompt_id": pid}))
        elif kind == "progress":
            self.send(message("progress", {"value": int(event.get("step", 0)),
                                           "max": int(event.get("total", 0)),
                                           "prompt_id": pid, "node": node}), item.client_id)
        elif kind in ("node_finished", "node_cached"):
            if kind == "node_finished":
                state.executed.append(node)
            state.outputs.append(node)
            if event.get("ui"):
                self._to_client(item, message("executed", {
                    "node": node, "display_node": node, "output": event["ui"],
                    "prompt_id": pid}))
        elif kind in ("error", "invalid"):
            self._error(item, state, event)
        elif kind == "interrupted":
            self._log(item, "execution_interrupted", {
                "node_id": node, "node_type": event.get("node_type"),
                "executed": list(state.executed)}, broadcast=True, final=True)
        elif kind == "run_finished" and event.get("ok"):
            self._log(item, "execution_success", {}, final=True)

    def _error(self, item: QueueItem, state: _RunState, event: dict[str, Any]) -> None:
        if event["type"] == "invalid":
            errors = event.get("errors") or []
            text = "; ".join(str(e.get("message")) for e in errors) or "invalid workflow"
            event = {"node": errors[0].get("node") if errors else None, "node_type": None,
                     "exception_type": "WorkflowInvalid", "message": text, "traceback": ""}
        node = event.get("node")
        node_type = event.get("node_type")
        if node_type is None and node in item.workflow.nodes:
            node_type = item.workflow.nodes[node].get("type")
        self._log(item, "execution_error", {
            "node_id": node, "node_type": node_type, "executed": list(state.executed),
            "exception_message": str(event.get("message", "")),
            "exception_type": str(event.get("exception_type", "")),
            "traceback": _traceback_lines(event.get("traceback")),
            "current_inputs": {}, "current_outputs": list(state.outputs)}, final=True)

    def run_recorded(self, item: QueueItem, entry: dict[str, Any]) -> None:
        """The history entry exists: now the prompt's outcome may be announced."""
        for msg, client in self._state(item).final:
            self.send(msg, client)

    def run_done(self, item: QueueItem, entry: dict[str, Any]) -> None:
        """After the history entry and the queue status: the end-of-prompt marker."""
        with self._lock:
            self._runs.pop(item.prompt_id, None)
        self._to_client(item, message("executing", {"node": None,
                                                    "prompt_id": item.prompt_id}))
