"""The prompt queue: one worker thread runs queued workflows with one shared executor.

One worker, because a model run uses the whole accelerator and because the executor's
cache is what makes the second run fast: every prompt, from every client, goes through the
same `Executor` and therefore the same cache. A prompt that fails (or raises something
unexpected) is recorded in the history and the worker carries on with the next one.

History lives in memory (newest last, bounded), like ComfyUI's; the files it points to stay
in the output folder.

Other client protocols (ComfyUI's, in `comfy`) watch the same queue through
`QueueListener`s rather than a queue of their own, so every prompt, whichever API sent it,
shares one order, one worker and one history. Pending prompts run lowest `number` first;
numbers count up, so that is submission order unless a client asks for a place.
"""

from __future__ import annotations

import base64
import bisect
import io
import itertools
import logging
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from graph_runtime.context import file_ref
from graph_runtime.executor import Executor, WorkflowInvalid
from graph_runtime.workflow import Workflow

Publish = Callable[[dict[str, Any], "str | None"], None]
log = logging.getLogger("noodle.server")
PREVIEW_MAX_SIDE = 256
HISTORY_LIMIT = 200


@dataclass
class QueueItem:
    """One submitted prompt. `meta` holds what the submitting protocol wants to keep with it
    (ComfyUI's prompt and extra_data, its event log), opaque to the queue."""

    prompt_id: str
    number: float
    workflow: Workflow
    client_id: str | None
    queued_at: float = field(default_factory=time.time)
    interrupt: threading.Event = field(default_factory=threading.Event)
    meta: dict[str, Any] = field(default_factory=dict)
    seq: int = 0

    def summary(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "number": self.number,
                "client_id": self.client_id, "queued_at": self.queued_at,
                "name": self.workflow.name}


def encode_preview(image: Any) -> str | None:
    """A PIL image as a small JPEG data URL, or None for anything else."""
    if image is None or not hasattr(image, "save") or not hasattr(image, "size"):
        return None
    try:
        img = image.convert("RGB")
        if max(img.size) > PREVIEW_MAX_SIDE:
            img = img.copy()
            img.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class DuplicatePrompt(ValueError):
    """A client-chosen prompt id that is already pending or running."""


class QueueListener(Protocol):
    """Another protocol's view of the queue. Called on the worker thread (and, for
    `queue_changed`, on whichever thread changed the queue), in this order per prompt:
    `run_event` for each executor event, then the history entry is written, then
    `run_recorded`, `queue_changed` (the prompt has left the queue) and `run_done`."""

    def queue_changed(self) -> None: ...

    def run_event(self, item: QueueItem, event: dict[str, Any]) -> None: ...

    def run_recorded(self, item: QueueItem, entry: dict[str, Any]) -> None: ...

    def run_done(self, item: QueueItem, entry: dict[str, Any]) -> None: ...


@dataclass
class HistoryRecord:
    """A finished prompt: our history entry and the item it came from."""

    entry: dict[str, Any]
    item: QueueItem


class PromptQueue:
    """Pending prompts, the running one, the history, and the worker thread."""

    def __init__(self, executor: Executor, publish: Publish,
                 history_limit: int = HISTORY_LIMIT) -> None:
        self.executor = executor
        self.publish = publish
        self.history_limit = history_limit
        self.listeners: list[QueueListener] = []
        self._pending: list[QueueItem] = []
        self._running: QueueItem | None = None
        self._history: OrderedDict[str, HistoryRecord] = OrderedDict()
        self._numbers = itertools.count(1)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._work, name="noodle-queue",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            if self._running is not None:
                self._running.interrupt.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ------------------------------------------------------------------ requests
    def put(self, workflow: Workflow, client_id: str | None, *, prompt_id: str | None = None,
            number: float | None = None, front: bool = False,
            meta: dict[str, Any] | None = None) -> QueueItem:
        """Queue a validated workflow. `number` places it (lowest runs first); without one
        it gets the next number, negated when `front` asks to jump the queue. A chosen
        `prompt_id` already pending or running raises `DuplicatePrompt`."""
        with self._cond:
            if prompt_id is not None and self._find_live(prompt_id) is not None:
                raise DuplicatePrompt(f"prompt {prompt_id!r} is already queued")
            if number is None:
                count = next(self._numbers)
                number = -count if front else count
            item = QueueItem(prompt_id or uuid.uuid4().hex, number, workflow, client_id,
                             meta=meta if meta is not None else {}, seq=next(self._seq))
            bisect.insort(self._pending, item, key=lambda i: (i.number, i.seq))
            # Announced before the worker can take it, so "queued" precedes "started".
            self.publish({"type": "queued", "data": {**item.summary(),
                                                     "queue_remaining": self.remaining()}},
                         client_id)
            self._publish_status()
            self._cond.notify_all()
        return item

    def remaining(self) -> int:
        with self._cond:
            return len(self._pending) + (1 if self._running is not None else 0)

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            running = [self._running.summary()] if self._running is not None else []
            return {"running": running, "pending": [i.summary() for i in self._pending]}

    def status(self) -> dict[str, Any]:
        with self._cond:
            running = self._running.prompt_id if self._running is not None else None
            return {"type": "status", "data": {"queue_remaining": self.remaining(),
                                               "running": running}}

    def _find_live(self, prompt_id: str) -> QueueItem | None:
        if self._running is not None and self._running.prompt_id == prompt_id:
            return self._running
        return next((i for i in self._pending if i.prompt_id == prompt_id), None)

    def items(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """The running item (zero or one) and the pending ones, in running order."""
        with self._cond:
            running = [self._running] if self._running is not None else []
            return running, list(self._pending)

    def remove_pending(self, prompt_ids: list[str] | None = None) -> int:
        """Drop the pending prompts with these ids (all of them when None); a running
        prompt is left alone (interrupt it instead). Returns how many were dropped."""
        with self._cond:
            before = len(self._pending)
            if prompt_ids is None:
                self._pending.clear()
            else:
                wanted = set(prompt_ids)
                self._pending = [i for i in self._pending if i.prompt_id not in wanted]
            dropped = before - len(self._pending)
        if dropped:
            self._publish_status()
        return dropped

    def delete(self, prompt_id: str) -> str | None:
        """Remove a pending prompt ("deleted") or interrupt the running one ("interrupted")."""
        with self._cond:
            for item in self._pending:
                if item.prompt_id == prompt_id:
                    self._pending.remove(item)
                    break
            else:
                if self._running is not None and self._running.prompt_id == prompt_id:
                    self._running.interrupt.set()
                    return "interrupted"
                return None
        self._publish_status()
        return "deleted"

    def interrupt(self, prompt_id: str | None = None) -> str | None:
        """Interrupt the running prompt (only if it is `prompt_id`, when given); returns
        its id (None when nothing was interrupted)."""
        with self._cond:
            running = self._running
            if running is None or (prompt_id is not None and running.prompt_id != prompt_id):
                return None
            running.interrupt.set()
            return running.prompt_id

    def history(self) -> list[dict[str, Any]]:
        with self._cond:
            return [r.entry for r in self._history.values()]

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        with self._cond:
            record = self._history.get(prompt_id)
            return record.entry if record is not None else None

    def history_records(self) -> list[HistoryRecord]:
        """Finished prompts, oldest first, with the items they came from."""
        with self._cond:
            return list(self._history.values())

    def forget(self, prompt_ids: list[str] | None = None) -> None:
        """Delete these prompts from the history (all of it when None)."""
        with self._cond:
            if prompt_ids is None:
                self._history.clear()
            for pid in prompt_ids or ():
                self._history.pop(pid, None)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing is pending or running (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # ------------------------------------------------------------------ worker
    def _notify(self, method: str, *args: Any) -> None:
        """Call every listener; one that fails is logged, never allowed to stop a run."""
        for listener in self.listeners:
            try:
                getattr(listener, method)(*args)
            except Exception:  # noqa: BLE001 - a protocol bug must not break the queue
                log.exception("queue listener %r failed in %s", listener, method)

    def _publish_status(self) -> None:
        self.publish(self.status(), None)
        self._notify("queue_changed")

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item = self._pending.pop(0)
                self._running = item
            self._publish_status()
            try:
                entry = self._run(item)
            except Exception as exc:  # noqa: BLE001 - the queue must survive any prompt
                entry = self._entry(item, "error")
                entry["error"] = {"node": None, "node_type": None,
                                  "exception_type": type(exc).__name__, "message": str(exc),
                                  "traceback": traceback.format_exc()}
                self._publish_unrun(item, "error", entry["error"])
            with self._cond:
                self._history.pop(item.prompt_id, None)  # a reused id moves to the end
                self._history[item.prompt_id] = HistoryRecord(entry, item)
                while len(self._history) > self.history_limit:
                    self._history.popitem(last=False)
                self._running = None
                self._cond.notify_all()
            self._notify("run_recorded", item, entry)
            self._publish_status()
            self._notify("run_done", item, entry)

    def _publish_unrun(self, item: QueueItem, kind: str, data: dict[str, Any]) -> None:
        """Why a prompt did not run, then its `finished`, so a client waiting for the end
        of the prompt is released."""
        pid, client = item.prompt_id, item.client_id
        self._notify("run_event", item, {"type": kind, **data})
        self.publish({"type": kind, "data": {"prompt_id": pid, **data}}, client)
        self.publish({"type": "finished", "data": {
            "prompt_id": pid, "ok": False, "executed": [], "cached": [], "files": [],
            "seconds": 0.0, "interrupted": False}}, client)

    def _entry(self, item: QueueItem, status: str) -> dict[str, Any]:
        return {**item.summary(), "status": status, "workflow": item.workflow.to_dict(),
                "outputs": {}, "executed": [], "cached": [], "files": [], "error": None,
                "seconds": 0.0, "finished_at": time.time()}

    def _run(self, item: QueueItem) -> dict[str, Any]:
        pid, client = item.prompt_id, item.client_id

        def on_event(event: dict[str, Any]) -> None:
            self._notify("run_event", item, event)
            message = self.translate(event, pid)
            if message is not None:
                self.publish(message, client)
            if event["type"] in ("node_finished", "node_cached") and event.get("ui"):
                self.publish({"type": "executed", "data": {
                    "prompt_id": pid, "node": event["node"], "node_type": event["node_type"],
                    "ui": event["ui"]}}, client)

        try:
            result = self.executor.run(item.workflow, on_event=on_event,
                                       interrupt=item.interrupt)
        except WorkflowInvalid as exc:
            # Valid when queued, invalid now (e.g. a model file was removed meanwhile).
            entry = self._entry(item, "invalid")
            entry["errors"] = exc.errors
            self._publish_unrun(item, "invalid", {"errors": exc.errors})
            return entry
        status = "success" if result.ok else ("interrupted" if result.interrupted else "error")
        entry = self._entry(item, status)
        entry.update(outputs=result.ui, executed=result.executed, cached=result.cached,
                     files=self._file_refs(result.files),
                     error=result.error, seconds=result.seconds)
        return entry

    def _file_refs(self, files: list[str]) -> list[dict[str, str]]:
        return [file_ref(f, self.executor.folders.output) for f in files]

    def translate(self, event: dict[str, Any], prompt_id: str) -> dict[str, Any] | None:
        """An executor event as the websocket message the canvas reads (None: not sent)."""
        kind = event["type"]
        data = {k: v for k, v in event.items() if k not in ("type", "run_id")}
        data["prompt_id"] = prompt_id
        if kind == "queued":
            return None  # announced by `put` already, with the queue number
        if kind == "run_started":
            return {"type": "started", "data": data}
        if kind == "progress":
            data["preview"] = encode_preview(event.get("preview"))
            return {"type": "progress", "data": data}
        if kind == "run_finished":
            data["files"] = self._file_refs(event.get("files", []))
            return {"type": "finished", "data": data}
        return {"type": kind, "data": data}
