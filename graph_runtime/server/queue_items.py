"""What the prompt queue holds and hands out: queue items, history records, listeners.

A `QueueItem` is one accepted prompt; the store keeps it as a `StoredPrompt` (its workflow
by hash), and `item_from` turns that back into an item after a restart. A `HistoryRecord`
is read from the store for each history request; it rebuilds its item only when a caller
asks (ComfyUI's history shows the prompt; ours needs only the stored entry).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from graph_runtime.server.store import StoredEntry, StoredPrompt
from graph_runtime.workflow import Workflow, WorkflowFormatError, from_dict


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
    workflow_hash: str = ""

    def stored(self) -> StoredPrompt:
        """What the store keeps of it (the workflow goes by its hash)."""
        return StoredPrompt(self.prompt_id, self.number, self.client_id, self.queued_at,
                            self.workflow_hash, "", self.meta, self.seq)

    def summary(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "number": self.number,
                "client_id": self.client_id, "queued_at": self.queued_at,
                "name": self.workflow.name}


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


def item_from(stored: StoredPrompt, readable: bool = True) -> QueueItem:
    """A stored prompt as a queue item again. Raises WorkflowFormatError for a workflow
    this build cannot read any more; `readable=False` gives the item an empty workflow
    instead (to record why it cannot run)."""
    workflow = from_dict(stored.workflow) if readable else Workflow()
    return QueueItem(stored.prompt_id, stored.number, workflow, stored.client_id,
                     stored.queued_at, meta=stored.meta, seq=stored.seq,
                     workflow_hash=stored.workflow_hash)


class HistoryRecord:
    """A finished prompt: our history entry (with its workflow document) and the item it
    came from. The item is rebuilt only when asked for, so listing our entries never turns
    stored documents back into workflows."""

    def __init__(self, stored: StoredEntry) -> None:
        self.id = stored.id
        self.prompt = stored.prompt
        self._stored = stored

    @functools.cached_property
    def entry(self) -> dict[str, Any]:
        return {**self._stored.entry, "workflow": self.prompt.workflow}

    def entry_json(self) -> str:
        """`entry` as JSON, made from the stored text without parsing the workflow."""
        text = self._stored.entry_text.strip()
        workflow = self.prompt.workflow_text or "{}"
        if text in ("", "{}"):
            return '{"workflow":' + workflow + "}"
        return text[:-1] + ',"workflow":' + workflow + "}"

    @functools.cached_property
    def item(self) -> QueueItem:
        try:
            return item_from(self.prompt)
        except WorkflowFormatError:  # shown as it was stored, without its nodes
            return item_from(self.prompt, readable=False)
