"""Calling one node: its run context, its events, interrupt, and one retry on out-of-memory.

Kept apart from the executor's planning and caching: this is the only place a node's own
code runs, so everything a node can do to a run (raise, be interrupted, run out of device
memory, report progress) is handled here, and turned into events and a result.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graph_runtime.cache import CacheEntry
from graph_runtime.context import Interrupted, RunContext, activate, deactivate
from graph_runtime.registry import NodeDef
from graph_runtime.settings import Folders

Event = dict[str, Any]


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/MPS out-of-memory, recognised without importing torch."""
    torch = sys.modules.get("torch")
    oom_cls = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if isinstance(oom_cls, type) and isinstance(exc, oom_cls):
        return True
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_device_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is not None and cuda.is_available():
            cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing is best effort; the retry will tell
        return


class Emitter:
    """Delivers events to the caller's handler, tagged with the run id when there is one,
    so a server can route the events of concurrent clients."""

    def __init__(self, on_event: Callable[[Event], None] | None, run_id: str | None) -> None:
        self.on_event, self.run_id = on_event, run_id

    def __call__(self, event: Event) -> None:
        if self.on_event is None:
            return
        if self.run_id is not None:
            event["run_id"] = self.run_id
        self.on_event(event)

    def for_node(self, node_type: str) -> Callable[[str, dict[str, Any]], None]:
        """What a node's context emits through (progress events)."""
        return lambda kind, data: self({"type": kind, "node_type": node_type, **data})


@dataclass
class NodeCall:
    """Calls one node inside its run context: events, interrupt, one retry on OOM."""

    emit: Emitter
    interrupt: threading.Event
    folders: Folders
    workflow: dict[str, Any]
    free_memory: Callable[[], None]
    memo_store: Callable[[str, Callable[[], Any]], Any] | None = None

    def __call__(self, nid: str, d: NodeDef, kwargs: dict[str, Any]
                 ) -> CacheEntry | dict[str, Any] | None:
        """Run one node. Returns its entry, an error dict, or None when interrupted."""
        node_type, emit = d.name, self.emit
        if d.output_node:
            self.folders.output.mkdir(parents=True, exist_ok=True)
        emit({"type": "node_started", "node": nid, "node_type": node_type})
        retried = False
        while True:
            ctx = RunContext(nid, node_type, self.folders, self.workflow, self.interrupt,
                             emit.for_node(node_type), memo_store=self.memo_store)
            t0 = time.perf_counter()
            token = activate(ctx)
            try:
                outputs = d.call(kwargs)
            except (Interrupted, KeyboardInterrupt):
                self.interrupt.set()
                emit({"type": "interrupted", "node": nid, "node_type": node_type})
                return None
            except Exception as exc:  # noqa: BLE001 - any node failure becomes an event
                if not retried and is_out_of_memory(exc):
                    retried = True  # once: a second out-of-memory error is reported
                    del exc
                    self.free_memory()
                    continue
                error = {"node": nid, "node_type": node_type,
                         "exception_type": type(exc).__name__, "message": str(exc),
                         "traceback": "".join(traceback.format_exception(
                             type(exc), exc, exc.__traceback__))}
                emit({"type": "error", **error})
                return error
            finally:
                deactivate(token)
            emit({"type": "node_finished", "node": nid, "node_type": node_type,
                  "seconds": time.perf_counter() - t0, "ui": ctx.ui})
            return CacheEntry(outputs, ctx.ui, ctx.files)
