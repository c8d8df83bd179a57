"""What a running node may ask of the executor: progress, interrupt, where to write files.

Nodes stay plain functions; the few that need the run (a sampler reporting steps, a save
node writing into the output folder) call `current()` instead of taking extra parameters,
so their signatures — and therefore their sockets — stay about the graph alone.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Interrupted(Exception):
    """Raised inside a node when the user interrupts the run (checked cooperatively)."""


@dataclass
class RunContext:
    """Per-node view of the run. The executor makes one for each node it executes."""

    node_id: str
    node_type: str
    output_dir: Path
    workflow: dict[str, Any] | None = None
    interrupt_event: threading.Event = field(default_factory=threading.Event)
    emit: Callable[[str, dict[str, Any]], None] = lambda kind, data: None
    ui: dict[str, list[Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

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
        """Record a written file: listed in run_finished and shown on the node."""
        path = Path(path)
        self.files.append(str(path))
        try:
            rel = path.resolve().relative_to(self.output_dir.resolve())
            subfolder, filename = str(rel.parent) if str(rel.parent) != "." else "", rel.name
        except ValueError:
            subfolder, filename = "", path.name
        self.ui.setdefault("images", []).append(
            {"filename": filename, "subfolder": subfolder, "type": kind})


_current: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "noodle_run_context", default=None)


def current() -> RunContext | None:
    """The context of the node being executed, or None outside the executor (plain calls)."""
    return _current.get()


def activate(ctx: RunContext | None) -> contextvars.Token[RunContext | None]:
    return _current.set(ctx)


def deactivate(token: contextvars.Token[RunContext | None]) -> None:
    _current.reset(token)
