"""What a running node may ask of the executor: progress, interrupt, its folders.

Nodes stay plain functions; the few that need the run (a sampler reporting steps, a save
node writing into the output folder) call `current()` or `folders()` instead of taking
extra parameters, so their signatures — and therefore their sockets — stay about the graph
alone. Called outside the executor, they get no context and the default folders.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from graph_runtime.settings import Folders

T = TypeVar("T")


class Interrupted(Exception):
    """Raised inside a node when the user interrupts the run (checked cooperatively)."""


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

    @property
    def output_dir(self) -> Path:
        return self.folders.output

    def check_interrupt(self) -> None:
        """Raise `Interrupted` if an interrupt was requested. Call between steps."""
        if self.interrupt_event.is_set():
            raise Interrupted(f"interrupted in node {self.node_id}")

    def progress(self, step: int, total: int, preview: Any = None) -> None:
        """Report step `step` of `total` (1-based), optionally with a preview PIL image.
        Also checks for interrupt, so a sampler needs only this one call per step."""
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
