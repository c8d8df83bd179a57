"""What a headless run shows a person: one line per node and a progress bar per node's steps.

Machine-readable output (`--json`) is the executor's events as they are; this is the other
reader, written to stderr so stdout stays free for results.
"""

from __future__ import annotations

import sys
from typing import Any


class ConsoleReporter:
    """Human output for headless runs: one line per node, a tqdm bar per node's steps."""

    def __init__(self, total: int = 0) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar: Any = None
        self._index = 0
        self._total = total

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        write = self._tqdm.write
        if kind == "run_started":
            self._total = len(event["nodes"])
        elif kind == "node_started":
            self._index += 1
        elif kind == "node_cached":
            self._index += 1
            write(f"[{self._index}/{self._total}] {event['node_type']} #{event['node']}: cached",
                  file=sys.stderr)
        elif kind == "progress":
            if self._bar is None:
                self._bar = self._tqdm(total=event["total"], file=sys.stderr, leave=False,
                                       desc=f"{event['node_type']} #{event['node']}")
            self._bar.total = event["total"]
            self._bar.update(event["step"] - self._bar.n)
        elif kind == "node_finished":
            self._close_bar()
            write(f"[{self._index}/{self._total}] {event['node_type']} #{event['node']}: "
                  f"{event['seconds']:.2f}s", file=sys.stderr)
        elif kind == "error":
            self._close_bar()
            write(f"error in {event['node_type']} #{event['node']}: "
                  f"{event['exception_type']}: {event['message']}\n{event['traceback']}",
                  file=sys.stderr)
        elif kind == "interrupted":
            self._close_bar()
            write(f"interrupted at node #{event['node']}", file=sys.stderr)
