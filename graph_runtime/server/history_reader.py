"""Reading the prompt history out of the queue's store, page by page.

A mixin of `PromptQueue`, kept apart so the queue's file is about queueing and running;
every method reads SQLite, so call them off the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graph_runtime.server.queue_items import HistoryRecord
from graph_runtime.server.store import QueueStore


class HistoryReader:
    """History access for a class that has the store (`_db`)."""

    # The queue's store, from the class this is mixed into (PromptQueue).
    _db: Callable[[], QueueStore]

    def history_count(self) -> int:
        return self._db().count()

    def history_start(self, offset: int) -> int | None:
        """Where the entry at `offset` (0: the oldest) is, for `history_from`."""
        return self._db().start_id(offset)

    def history_from(self, start: int, limit: int) -> list[HistoryRecord]:
        """Up to `limit` finished prompts from `start` on (a `history_start` or a record's
        `id + 1`), oldest first."""
        return [HistoryRecord(s) for s in self._db().entries(start, limit)]

    def history(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Our entries from `offset` (0: the oldest), oldest first."""
        start = self.history_start(offset)
        if start is None:
            return []
        count = limit if limit is not None else self.history_count()
        return [r.entry for r in self.history_from(start, count)]

    def history_record(self, prompt_id: str) -> HistoryRecord | None:
        stored = self._db().entry(prompt_id)
        return HistoryRecord(stored) if stored is not None else None

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        record = self.history_record(prompt_id)
        return record.entry if record is not None else None

    def forget(self, prompt_ids: list[str] | None = None) -> None:
        """Delete these prompts from the history (all of it when None)."""
        self._db().forget(prompt_ids)
