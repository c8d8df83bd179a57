"""The prompt queue: one worker thread runs queued workflows with one shared executor.

One worker, because a model run uses the whole accelerator and because the executor's
cache is what makes the second run fast: every prompt, from every client, goes through the
same `Executor` and therefore the same cache. A prompt that fails (or raises something
unexpected) is recorded in the history and the worker carries on with the next one.

History lives in memory (newest last, bounded), like ComfyUI's; the files it points to stay
in the output folder.
"""

from __future__ import annotations

import base64
import io
import itertools
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from graph_runtime.context import file_ref
from graph_runtime.executor import Executor, WorkflowInvalid
from graph_runtime.workflow import Workflow

Publish = Callable[[dict[str, Any], "str | None"], None]
PREVIEW_MAX_SIDE = 256
HISTORY_LIMIT = 200


@dataclass
class QueueItem:
    prompt_id: str
    number: int
    workflow: Workflow
    client_id: str | None
    queued_at: float = field(default_factory=time.time)
    interrupt: threading.Event = field(default_factory=threading.Event)

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


class PromptQueue:
    """Pending prompts, the running one, the history, and the worker thread."""

    def __init__(self, executor: Executor, publish: Publish,
                 history_limit: int = HISTORY_LIMIT) -> None:
        self.executor = executor
        self.publish = publish
        self.history_limit = history_limit
        self._pending: deque[QueueItem] = deque()
        self._running: QueueItem | None = None
        self._history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._numbers = itertools.count(1)
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
    def put(self, workflow: Workflow, client_id: str | None) -> QueueItem:
        with self._cond:
            item = QueueItem(uuid.uuid4().hex, next(self._numbers), workflow, client_id)
            self._pending.append(item)
            self._cond.notify_all()
        self.publish({"type": "queued", "data": {**item.summary(),
                                                 "queue_remaining": self.remaining()}},
                     client_id)
        self._publish_status()
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

    def interrupt(self) -> str | None:
        """Interrupt the running prompt; returns its id (None when idle)."""
        with self._cond:
            if self._running is None:
                return None
            self._running.interrupt.set()
            return self._running.prompt_id

    def history(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._history.values())

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        with self._cond:
            return self._history.get(prompt_id)

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
    def _publish_status(self) -> None:
        self.publish(self.status(), None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item = self._pending.popleft()
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
                self._history[item.prompt_id] = entry
                while len(self._history) > self.history_limit:
                    self._history.popitem(last=False)
                self._running = None
                self._cond.notify_all()
            self._publish_status()

    def _publish_unrun(self, item: QueueItem, kind: str, data: dict[str, Any]) -> None:
        """Why a prompt did not run, then its `finished`, so a client waiting for the end
        of the prompt is released."""
        pid, client = item.prompt_id, item.client_id
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
