"""The prompt queue: one worker thread runs queued workflows with one shared executor.

One worker, because a model run uses the whole accelerator and because the executor's
cache is what makes the second run fast: every prompt, from every client, goes through the
same `Executor` and therefore the same cache. A prompt that fails (or raises something
unexpected) is recorded in the history and the worker carries on with the next one. With
another `backend` (see `backend`; Ray workers, say) the worker thread hands each prompt to
a thread of its own, as many at once as the backend has room for, and the order, history
and events stay here.

Every accepted prompt is written to a `QueueStore` (SQLite; see `store`) before it is
acknowledged, marked when it starts, and moved into the history when it ends, so after a
crash (even kill -9) the pending prompts run again in order and the history, with the
files it points to in the output folder, is still there. The prompt that was running is
recorded as interrupted, or queued again when `requeue_interrupted` says so. The history
entry is committed before the prompt's final event is published (ours and every
listener's), so a client that reads the history on that event finds the entry.

Other client protocols (ComfyUI's, in `comfy`) watch the same queue through
`QueueListener`s rather than a queue of their own, so every prompt, whichever API sent it,
shares one order, one worker and one history. Pending prompts run lowest `number` first;
numbers count up, so that is submission order unless a client asks for a place.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import sqlite3
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graph_runtime.context import file_ref
from graph_runtime.executor import Executor, WorkflowInvalid
from graph_runtime.server.backend import Backend, LocalBackend, RemoteResult
from graph_runtime.server.history_reader import HistoryReader
from graph_runtime.server.messages import finished_message, translate
from graph_runtime.server.queue_items import (
    DuplicatePrompt,
    HistoryRecord,
    QueueItem,
    QueueListener,
    item_from,
)
from graph_runtime.server.store import MEMORY, QueueStore, WorkflowText
from graph_runtime.workflow import Workflow, WorkflowFormatError

__all__ = ["DuplicatePrompt", "HistoryRecord", "PromptQueue", "QueueItem", "QueueListener"]

Publish = Callable[[dict[str, Any], "str | None"], None]
Message = dict[str, Any]
log = logging.getLogger("noodle.server")
HISTORY_LIMIT = 10000  # as ComfyUI's; the oldest entries go first
STOPPED_MESSAGE = ("the server stopped while this prompt was running; it was not run again "
                   "(start the server with --requeue-interrupted to run such prompts again)")


class PromptQueue(HistoryReader):
    """Pending prompts, the running one, the history, and the worker thread.

    `state_db` is the SQLite file that keeps them across restarts (`":memory:"`: kept only
    while the process lives). It is opened by `start` (or the first use), which also queues
    again what an earlier process left unfinished, and closed by `stop`."""

    def __init__(self, executor: Executor, publish: Publish,
                 history_limit: int = HISTORY_LIMIT, *, state_db: Path | str = MEMORY,
                 requeue_interrupted: bool = False, backend: Backend | None = None) -> None:
        self.executor = executor
        # Where prompts run (see `backend`): this executor unless another is given.
        self.backend: Backend = backend if backend is not None else LocalBackend(executor)
        self.publish = publish
        self.history_limit = history_limit
        self.state_db = state_db
        self.requeue_interrupted = requeue_interrupted
        self.listeners: list[QueueListener] = []
        self._pending: list[QueueItem] = []
        self._active: dict[str, QueueItem] = {}  # running, in the order they started
        self._runners: list[threading.Thread] = []
        self._store: QueueStore | None = None
        self._numbers = itertools.count(1)
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open the store, queue again what it holds unfinished, start the worker."""
        self._db()
        if self._thread is None:
            self.backend.start()
            self._stop = False
            self._thread = threading.Thread(target=self._work, name="noodle-queue",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt the running prompt (recorded as interrupted), stop the worker and close
        the store; pending prompts stay stored for the next start."""
        with self._cond:
            self._stop = True
            for running in self._active.values():
                running.interrupt.set()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            self._thread = None
        for runner in self._runners:
            runner.join(timeout)
        self.backend.stop()
        with self._cond:
            if self._store is not None and (thread is None or not thread.is_alive()):
                self._store.close()
                self._store = None

    def _db(self) -> QueueStore:
        """The store, opened (and its unfinished prompts restored) on first use."""
        with self._cond:
            if self._store is None:
                self._store = QueueStore(self.state_db, self.history_limit)
                self._restore(self._store)
            return self._store

    def _restore(self, store: QueueStore) -> None:
        """Queue again the prompts an earlier process left; the one it was running is
        recorded as interrupted (or queued again, with `requeue_interrupted`)."""
        self._numbers = itertools.count(int(store.max_number()) + 1)
        for stored in store.unfinished():
            try:
                item = item_from(stored)
            except WorkflowFormatError as exc:
                item = item_from(stored, readable=False)
                self._finish_unrun(store, item, "error", "WorkflowFormatError", str(exc))
                continue
            if stored.running and not self.requeue_interrupted:
                self._finish_unrun(store, item, "interrupted", "ServerStopped",
                                   STOPPED_MESSAGE)
                continue
            if stored.running:
                store.set_running(item.prompt_id, False)
            bisect.insort(self._pending, item, key=lambda i: (i.number, i.seq))
        if self._pending:
            log.info("queued again %d prompt(s) left unfinished", len(self._pending))

    def _finish_unrun(self, store: QueueStore, item: QueueItem, status: str,
                      exception_type: str, message: str) -> None:
        """Record a restored prompt that will not run, telling listeners as for a run."""
        error = {"node": None, "node_type": None, "exception_type": exception_type,
                 "message": message, "traceback": ""}
        kind = "interrupted" if status == "interrupted" else "error"
        self._notify("run_event", item, {"type": kind, **error})
        entry = self._entry(item, status)
        entry["error"] = error
        store.finish(item.stored(), entry)
        log.warning("prompt %s: %s", item.prompt_id, message)
        self._notify("run_recorded", item, entry)
        self._notify("run_done", item, entry)

    # ------------------------------------------------------------------ requests
    def put(self, workflow: Workflow, client_id: str | None, *, prompt_id: str | None = None,
            number: float | None = None, front: bool = False,
            meta: dict[str, Any] | None = None) -> QueueItem:
        """Queue a validated workflow. `number` places it (lowest runs first); without one
        it gets the next number, negated when `front` asks to jump the queue. A chosen
        `prompt_id` already pending or running raises `DuplicatePrompt`. The prompt is
        stored before this returns, so an acknowledged prompt survives a crash."""
        document = WorkflowText.of(workflow.to_dict())  # serialised outside the lock
        store = self._db()
        with self._cond:
            if prompt_id is not None and self._find_live(prompt_id) is not None:
                raise DuplicatePrompt(f"prompt {prompt_id!r} is already queued")
            if number is None:
                count = next(self._numbers)
                number = -count if front else count
            item = QueueItem(prompt_id or uuid.uuid4().hex, number, workflow, client_id,
                             meta=meta if meta is not None else {},
                             workflow_hash=document.hash)
            item.seq = store.add(item.stored(), document)
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
            return len(self._pending) + len(self._active)

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            running = [i.summary() for i in self._active.values()]
            return {"running": running, "pending": [i.summary() for i in self._pending]}

    def status(self) -> dict[str, Any]:
        with self._cond:
            running = next(iter(self._active), None)
            return {"type": "status", "data": {"queue_remaining": self.remaining(),
                                               "running": running}}

    def _find_live(self, prompt_id: str) -> QueueItem | None:
        if prompt_id in self._active:
            return self._active[prompt_id]
        return next((i for i in self._pending if i.prompt_id == prompt_id), None)

    def items(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """The running item (zero or one) and the pending ones, in running order."""
        with self._cond:
            return list(self._active.values()), list(self._pending)

    def remove_pending(self, prompt_ids: list[str] | None = None) -> int:
        """Drop the pending prompts with these ids (all of them when None); a running
        prompt is left alone (interrupt it instead). Returns how many were dropped."""
        with self._cond:
            wanted = None if prompt_ids is None else set(prompt_ids)
            dropped_ids = [i.prompt_id for i in self._pending
                           if wanted is None or i.prompt_id in wanted]
            if dropped_ids:
                self._db().remove(dropped_ids)
            self._pending = [i for i in self._pending if wanted is not None
                             and i.prompt_id not in wanted]
            dropped = len(dropped_ids)
        if dropped:
            self._publish_status()
        return dropped

    def delete(self, prompt_id: str) -> str | None:
        """Remove a pending prompt ("deleted") or interrupt the running one ("interrupted")."""
        with self._cond:
            for item in self._pending:
                if item.prompt_id == prompt_id:
                    self._db().remove([prompt_id])
                    self._pending.remove(item)
                    break
            else:
                if prompt_id in self._active:
                    self._active[prompt_id].interrupt.set()
                    return "interrupted"
                return None
        self._publish_status()
        return "deleted"

    def interrupt(self, prompt_id: str | None = None) -> str | None:
        """Interrupt the running prompt (only if it is `prompt_id`, when given; every
        running one otherwise); returns the first id interrupted (None: none was)."""
        with self._cond:
            if prompt_id is not None:
                chosen = [self._active[prompt_id]] if prompt_id in self._active else []
            else:
                chosen = list(self._active.values())
            for running in chosen:
                running.interrupt.set()
            return chosen[0].prompt_id if chosen else None

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until nothing is pending or running (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._active:
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
                while not self._stop and not self._can_start():
                    # A backend's capacity changes without telling us (a worker returns):
                    # look again now and then while prompts wait.
                    self._cond.wait(0.5 if self._pending else None)
                if self._stop:
                    return
                item = self._pending.pop(0)
                self._active[item.prompt_id] = item
                self._write(self._db().set_running, item.prompt_id)
            self._publish_status()
            if not self.backend.concurrent:
                self._serve(item)
                continue
            runner = threading.Thread(target=self._serve, args=(item,), daemon=True,
                                      name=f"noodle-run-{item.prompt_id[:8]}")
            self._runners = [r for r in self._runners if r.is_alive()] + [runner]
            runner.start()

    def _can_start(self) -> bool:
        return bool(self._pending) and len(self._active) < self.backend.capacity()

    def _serve(self, item: QueueItem) -> None:
        """Run one item and record it, whatever happens."""
        try:
            entry, finished = self._run(item)
        except Exception as exc:  # noqa: BLE001 - the queue must survive any prompt
            entry = self._entry(item, "error")
            entry["error"] = {"node": None, "node_type": None,
                              "exception_type": type(exc).__name__, "message": str(exc),
                              "traceback": traceback.format_exc()}
            finished = self._publish_unrun(item, "error", entry["error"])
        self._record(item, entry, finished)

    def _record(self, item: QueueItem, entry: dict[str, Any], finished: Message) -> None:
        """Commit the history entry, then announce the end of the prompt: our `finished`,
        the listeners' final messages, the queue status."""
        with self._cond:
            self._write(self._db().finish, item.stored(), entry)
            self._active.pop(item.prompt_id, None)
            self._cond.notify_all()
        self.publish(finished, item.client_id)
        self._notify("run_recorded", item, entry)
        self._publish_status()
        self._notify("run_done", item, entry)

    @staticmethod
    def _write(change: Callable[..., Any], *args: Any) -> None:
        """A store change from the worker: a failing disk is logged, and the queue goes on
        (the prompt then is not kept across a restart)."""
        try:
            change(*args)
        except sqlite3.Error:
            log.exception("could not write the queue's state database")

    def _publish_unrun(self, item: QueueItem, kind: str, data: dict[str, Any]) -> Message:
        """Why a prompt did not run; returns its `finished` (published once the history
        entry is written), so a client waiting for the end of the prompt is released."""
        pid, client = item.prompt_id, item.client_id
        self._notify("run_event", item, {"type": kind, **data})
        self.publish({"type": kind, "data": {"prompt_id": pid, **data}}, client)
        return finished_message(pid)

    def _entry(self, item: QueueItem, status: str) -> dict[str, Any]:
        # The workflow is not repeated here: the store keeps it once and adds it on reading.
        return {**item.summary(), "status": status,
                "outputs": {}, "executed": [], "cached": [], "files": [], "error": None,
                "seconds": 0.0, "finished_at": time.time()}

    def _run(self, item: QueueItem) -> tuple[dict[str, Any], Message]:
        """Run the prompt; its history entry and its `finished` message (held back)."""
        pid, client = item.prompt_id, item.client_id
        held: list[Message] = []

        def on_event(event: dict[str, Any]) -> None:
            self._notify("run_event", item, event)
            message = translate(event, pid, self._file_refs)
            if message is not None and message["type"] == "finished":
                held.append(message)
            elif message is not None:
                self.publish(message, client)
            if event["type"] in ("node_finished", "node_cached") and event.get("ui"):
                self.publish({"type": "executed", "data": {
                    "prompt_id": pid, "node": event["node"], "node_type": event["node_type"],
                    "ui": event["ui"]}}, client)

        try:
            result = self.backend.run(pid, item.workflow, on_event, item.interrupt)
        except WorkflowInvalid as exc:
            # Valid when queued, invalid now (e.g. a model file was removed meanwhile).
            entry = self._entry(item, "invalid")
            entry["errors"] = exc.errors
            return entry, self._publish_unrun(item, "invalid", {"errors": exc.errors})
        status = "success" if result.ok else ("interrupted" if result.interrupted else "error")
        entry = self._entry(item, status)
        entry.update(outputs=result.ui, executed=result.executed, cached=result.cached,
                     files=self._file_refs(result.files),
                     error=result.error, seconds=result.seconds)
        if isinstance(result, RemoteResult):
            entry.update(result.notes)
        return entry, held[-1] if held else finished_message(pid, ok=result.ok)

    def _file_refs(self, files: list[str]) -> list[dict[str, str]]:
        return [file_ref(f, self.executor.folders.output) for f in files]
