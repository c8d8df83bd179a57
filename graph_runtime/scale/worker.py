"""One scale-out worker: an executor, its cache and its folders, inside a Ray actor.

The class is plain Python (Ray makes it an actor in `ray_backend` and `batch`), so it is
importable and testable without Ray. The node library is imported by module name in the
worker's own process. Output files are written to a staging folder of the worker and sent
back as bytes with the event that shows them, because the server need not share a disk.
Previews are shrunk here, before they cross the network.
"""

from __future__ import annotations

import importlib
import os
import queue
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph_runtime.cache import OutputCache
from graph_runtime.context import PreviewPolicy
from graph_runtime.executor import Executor, RunResult, WorkflowInvalid
from graph_runtime.registry import REGISTRY
from graph_runtime.settings import Folders

Event = dict[str, Any]
PREVIEW_SIDE = 256
RESULT = "worker_result"  # the last item a run yields: the run's result and its files
_DONE = object()


@dataclass
class WorkerSettings:
    """What a worker needs to build its executor, sent to it as plain data."""

    nodes: str = "nodes"
    models: str | None = None
    model_paths_file: str | None = None
    input: str | None = None
    budgets: dict[str, int | None] = field(default_factory=dict)
    torch_threads: int | None = None


def _limit_threads(threads: int | None) -> None:
    """One torch thread per CPU worker keeps N workers from fighting over N cores."""
    if not threads:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return
    torch.set_num_threads(threads)


def _small_preview(event: Event) -> Event:
    image = event.get("preview")
    if image is not None and hasattr(image, "thumbnail") and max(image.size) > PREVIEW_SIDE:
        image = image.copy()
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        event = {**event, "preview": image}
    return event


class ExecutorWorker:
    """An executor that runs one workflow at a time and streams what it does."""

    def __init__(self, name: str, settings: WorkerSettings) -> None:
        _limit_threads(settings.torch_threads)
        for module in (n.strip() for n in settings.nodes.split(",")):
            if module:
                importlib.import_module(module)
        self.name = name
        staging = Path(tempfile.mkdtemp(prefix=f"noodle-{name}-"))
        self.folders = Folders.from_env(output=staging / "output", temp=staging / "temp",
                                        models=settings.models, input=settings.input,
                                        model_paths_file=settings.model_paths_file)
        for folder in (self.folders.output, self.folders.temp):
            folder.mkdir(parents=True, exist_ok=True)
        self.executor = Executor(REGISTRY, OutputCache(settings.budgets), self.folders)
        self._interrupts: dict[str, threading.Event] = {}

    def ping(self) -> dict[str, Any]:
        """Who and where this worker is (also: it is up)."""
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname()}

    def interrupt(self, run_id: str) -> bool:
        flag = self._interrupts.get(run_id)
        if flag is not None:
            flag.set()
        return flag is not None

    def held(self) -> list[str]:
        """The signatures this worker's cache holds, for the dispatcher's affinity."""
        return [k for k in self.executor.cache.keys() if not k.startswith("memo:")]

    def run(self, run_id: str, workflow: dict[str, Any], output_dir: str | None = None,
            preview_every: int = 0) -> Iterator[Event]:
        """Run `workflow`, yielding its events as they happen (with the bytes of files they
        show), then one `worker_result` event. Ray streams these to the caller.
        `preview_every`: step previews every N steps and the last (0: none), as the server
        asks when someone is watching."""
        previews = PreviewPolicy(preview_every) if preview_every > 0 else None
        events: queue.Queue[Any] = queue.Queue()
        flag = self._interrupts[run_id] = threading.Event()
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = self.executor.run(workflow, on_event=events.put,
                                                  interrupt=flag, output_dir=output_dir,
                                                  previews=previews)
            except WorkflowInvalid as exc:
                box["invalid"] = exc.errors
            except Exception as exc:  # noqa: BLE001 - sent back, the worker lives on
                box["failure"] = f"{type(exc).__name__}: {exc}"
            finally:
                events.put(_DONE)

        thread = threading.Thread(target=work, name=f"run-{run_id[:8]}", daemon=True)
        thread.start()
        sent: set[str] = set()
        try:
            while (event := events.get()) is not _DONE:
                yield self._outgoing(event, sent, output_dir)
            thread.join()
            yield self._result(box)
        finally:
            self._interrupts.pop(run_id, None)

    def run_batch(self, run_id: str, workflow: dict[str, Any]) -> Event:
        """Run to the end and return only the result, with every file the run sent (the
        batch needs no live events)."""
        files: list[dict[str, Any]] = []
        last: Event = {}
        for event in self.run(run_id, workflow):
            files.extend(event.get("worker_files") or [])
            last = event
        return {**last, "run_id": run_id, "worker_files": files}

    # ------------------------------------------------------------------ files
    def _folder(self, kind: str, output_dir: str | None) -> Path:
        if kind == "temp":
            return self.folders.temp
        return Path(output_dir) if output_dir is not None else self.folders.output

    def _attach(self, path: Path, kind: str, root: Path, sent: set[str]) -> dict[str, Any]:
        sent.add(str(path))
        rel = path.resolve().relative_to(root.resolve()).as_posix()
        return {"path": str(path), "kind": kind, "relative": rel, "data": path.read_bytes()}

    def _outgoing(self, event: Event, sent: set[str], output_dir: str | None) -> Event:
        """The event as sent: a small preview, and the files its `ui` shows attached."""
        kind = event.get("type")
        if kind == "progress":
            return _small_preview(event)
        files = []
        for ref in (event.get("ui") or {}).get("images") or []:
            where = ref.get("type", "output")
            root = self._folder(where, output_dir)
            path = root / ref.get("subfolder", "") / ref["filename"]
            if path.is_file():
                files.append(self._attach(path, where, root, sent))
        if kind == "run_finished":  # files no node showed: sent before the run's end
            files.extend(self._unsent(event.get("files") or [], sent, output_dir))
        return {**event, "worker_files": files} if files else event

    def _unsent(self, names: list[str], sent: set[str], output_dir: str | None
                ) -> list[dict[str, Any]]:
        files = []
        output = self._folder("output", output_dir)
        for name in names:
            path = Path(name)
            if name in sent or not path.is_file():
                continue
            try:
                files.append(self._attach(path, "output", output, sent))
            except ValueError:  # not in the output folder: a temp file
                files.append(self._attach(path, "temp", self.folders.temp, sent))
        return files

    def _result(self, box: dict[str, Any]) -> Event:
        result: RunResult | None = box.get("result")
        out: Event = {"type": RESULT, "worker": self.name, "held": self.held(),
                      "invalid": box.get("invalid"), "failure": box.get("failure")}
        if result is not None:
            out.update(ok=result.ok, executed=result.executed, cached=result.cached,
                       ui=result.ui, files=result.files, error=result.error,
                       interrupted=result.interrupted, seconds=result.seconds,
                       signatures=result.signatures)
        return out
