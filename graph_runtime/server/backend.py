"""Where the prompt queue's prompts run: in this process, or on workers elsewhere.

The queue keeps the order, the history and the websocket; a backend only runs one item and
reports its events. `LocalBackend` is the default (one executor, one prompt at a time, no
extra dependency); `graph_runtime.scale.ray_backend.RayBackend` runs several at once on Ray
actors. A backend whose `capacity` is above 1 has each prompt run on a thread of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from graph_runtime.executor import Executor, RunResult
from graph_runtime.workflow import Workflow

Event = dict[str, Any]
OnEvent = Callable[[Event], None]


@dataclass
class RemoteResult(RunResult):
    """A run done elsewhere; `notes` go into the history entry (`worker`, `retried`)."""

    notes: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """Runs queue items. `capacity()` is how many may run at once right now (0 while no
    worker is available: prompts then wait in the queue); `concurrent` backends have each
    prompt run on a thread of its own."""

    concurrent: bool

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def capacity(self) -> int: ...

    def run(self, prompt_id: str, workflow: Workflow, on_event: OnEvent,
            interrupt: threading.Event) -> RunResult: ...


class LocalBackend:
    """Today's behaviour: the server's own executor, one prompt at a time."""

    concurrent = False

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def start(self) -> None:
        """Nothing to start: the executor is ready."""

    def stop(self) -> None:
        """Nothing to stop."""

    def capacity(self) -> int:
        return 1

    def run(self, prompt_id: str, workflow: Workflow, on_event: OnEvent,
            interrupt: threading.Event) -> RunResult:
        return self.executor.run(workflow, on_event=on_event, interrupt=interrupt)
