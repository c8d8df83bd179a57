"""What a running node may ask of the executor: progress, interrupt, its folders.

Nodes stay plain functions; the few that need the run (a sampler reporting steps, a save
node writing into the output folder) call `current()` or `folders()` instead of taking
extra parameters, so their signatures — and therefore their sockets — stay about the graph
alone. Called outside the executor, they get no context and the default folders.

Step previews cost a decode or a projection and an image encode, so a sampler makes one
only when `wants_preview` says someone will see it: the run's `PreviewPolicy` (set by
whoever runs the executor: the server while a canvas socket is open, every `every` steps,
and the last step; nobody by default) decides. A preview handed to `progress` as a
callable is rendered off the sampling thread by one worker that keeps only the newest
request, and it rides on the next progress event once ready; the last step's is rendered
at once, so a run ends on its final preview. Progress events stay one per step.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from graph_runtime.settings import Folders

T = TypeVar("T")
Render = Callable[[], Any]
log = logging.getLogger("noodle.previews")


class Interrupted(Exception):
    """Raised inside a node when the user interrupts the run (checked cooperatively)."""


@dataclass(frozen=True)
class PreviewPolicy:
    """Whether step previews are wanted: while `listening()` says someone will see them, at
    every `every`-th step and the last one (`every` <= 0: never)."""

    every: int = 1
    listening: Callable[[], bool] = lambda: True

    def wants(self, step: int, total: int) -> bool:
        if self.every <= 0 or not (step % self.every == 0 or step >= total):
            return False
        return bool(self.listening())


class PreviewWorker:
    """Renders previews on one background thread, newest request first: a request still
    waiting when a newer one arrives is dropped (`dropped`), so a slow preview never makes
    the loop wait and never falls behind it. The thread lives only while there is work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: tuple[int, Render] | None = None
        self._ready: tuple[int, Any] | None = None
        self._busy = False
        self.dropped = 0
        self.rendered: list[int] = []

    def submit(self, step: int, render: Render) -> None:
        with self._lock:
            if self._pending is not None:
                self.dropped += 1
            self._pending = (step, render)
            if self._busy:
                return
            self._busy = True
        threading.Thread(target=self._work, name="noodle-preview", daemon=True).start()

    def take(self) -> Any:
        """The newest finished preview not yet handed out, or None."""
        with self._lock:
            ready, self._ready = self._ready, None
        return None if ready is None else ready[1]

    def render_now(self, step: int, render: Render) -> Any:
        """Render on the caller's thread (the last step's); None if the render fails."""
        try:
            image = render()
        except Exception:  # noqa: BLE001 - a failed preview must not end the run
            log.exception("step preview failed")
            return None
        with self._lock:
            self.rendered.append(step)
        return image

    def cancel(self) -> None:
        """Forget the waiting request and any unsent result (the last step renders its own)."""
        with self._lock:
            if self._pending is not None:
                self.dropped += 1
            self._pending, self._ready = None, None

    def _work(self) -> None:
        while True:
            with self._lock:
                job, self._pending = self._pending, None
                if job is None:
                    self._busy = False
                    return
            step, render = job
            try:
                image = render()
            except Exception:  # noqa: BLE001 - a failed preview must not end the run
                log.exception("step preview failed")
                continue
            with self._lock:
                self.rendered.append(step)
                if self._ready is None or self._ready[0] <= step:
                    self._ready = (step, image)


_previews: contextvars.ContextVar[PreviewPolicy | None] = contextvars.ContextVar(
    "noodle_previews", default=None)


def preview_policy() -> PreviewPolicy | None:
    """The policy of the run in progress on this thread (None: no previews)."""
    return _previews.get()


def set_preview_policy(policy: PreviewPolicy | None) -> contextvars.Token[PreviewPolicy | None]:
    """Set for the run about to start (the executor does); reset with the token after."""
    return _previews.set(policy)


def reset_preview_policy(token: contextvars.Token[PreviewPolicy | None]) -> None:
    _previews.reset(token)


@dataclass
class RunContext:
    """Per-node view of the run. The executor makes one for each node it executes."""

    node_id: str
    node_type: str
    folders: Folders
    workflow: dict[str, Any] | None = None
    interrupt_event: threading.Event = field(default_factory=threading.Event)
    emit: Callable[[str, dict[str, Any]], None] = lambda kind, data: None
    ui: dict[str, list[Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    # The executor's store for `memo`; None outside one (the value is then just computed).
    memo_store: Callable[[str, Callable[[], Any]], Any] | None = None
    # Who wants step previews, and how often: the run's (None: nobody).
    previews: PreviewPolicy | None = field(default_factory=preview_policy)
    preview_worker: PreviewWorker = field(default_factory=PreviewWorker)

    @property
    def output_dir(self) -> Path:
        return self.folders.output

    def check_interrupt(self) -> None:
        """Raise `Interrupted` if an interrupt was requested. Call between steps."""
        if self.interrupt_event.is_set():
            raise Interrupted(f"interrupted in node {self.node_id}")

    def wants_preview(self, step: int, total: int) -> bool:
        """Whether a preview of step `step` of `total` will be seen: ask before making one."""
        return self.previews is not None and self.previews.wants(step, total)

    def progress(self, step: int, total: int, preview: Any = None) -> None:
        """Report step `step` of `total` (1-based), optionally with a preview: a PIL image,
        or a callable making one, which is rendered off this thread (the last step's at
        once) and sent with the next progress event. Also checks for interrupt, so a
        sampler needs only this one call per step."""
        worker = self.preview_worker
        if callable(preview):
            if step >= total:
                worker.cancel()
                preview = worker.render_now(step, preview)
            else:
                worker.submit(step, preview)
                preview = None
        if preview is None:
            preview = worker.take()
        self.emit("progress", {"node": self.node_id, "step": step, "total": total,
                               "preview": preview})
        self.check_interrupt()

    def add_file(self, path: Path | str, kind: str = "output") -> None:
        """Record a written file (`kind`: the folder it is in, "output" or "temp"): listed
        in run_finished and shown on the node."""
        self.files.append(str(path))
        folder = self.folders.temp if kind == "temp" else self.folders.output
        self.ui.setdefault("images", []).append(file_ref(path, folder, kind))


def file_ref(path: Path | str, folder: Path, kind: str = "output") -> dict[str, str]:
    """A file as the `{filename, subfolder, type}` that `/api/view` takes."""
    p = Path(path)
    try:
        rel = p.resolve().relative_to(folder.resolve())
    except ValueError:
        return {"filename": p.name, "subfolder": "", "type": kind}
    parent = "" if str(rel.parent) == "." else rel.parent.as_posix()
    return {"filename": rel.name, "subfolder": parent, "type": kind}


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "noodle_run_context", default=None)


def current() -> RunContext | None:
    """The context of the node being executed, or None outside the executor (plain calls)."""
    return _current.get()


def memo(key: str, compute: Callable[[], T]) -> T:
    """`compute()`, kept in the executor's cache under `key` (which must name everything the
    value depends on, e.g. a file's path, size and mtime) so that a node re-run for another
    reason reuses it: a LoRA whose strength changed does not read its file again. Counted
    and evicted like any output; outside the executor it is just computed."""
    ctx = _current.get()
    if ctx is None or ctx.memo_store is None:
        return compute()
    return ctx.memo_store(key, compute)


def folders() -> Folders:
    """The running node's folders; outside the executor, the defaults and their overrides."""
    ctx = _current.get()
    return ctx.folders if ctx is not None else Folders.from_env()


def activate(ctx: RunContext | None) -> contextvars.Token[RunContext | None]:
    return _current.set(ctx)


def deactivate(token: contextvars.Token[RunContext | None]) -> None:
    _current.reset(token)
