"""`noodle batch`: one workflow over a sweep of inputs, locally or on a Ray actor pool.

Each item is the workflow with its overrides applied and a signature: a hash of the
signatures of everything its outputs need (inputs, model files, output folder). The
manifest (`manifest.jsonl` in the output folder, one JSON line per finished item:
index, overrides, signature, status, files, seconds, worker, error) is appended as items
finish, so an interrupted batch loses nothing. A re-run skips an item whose last record
succeeded with the same signature and whose files are all still there.

With Ray, the items go through `ray.util.ActorPool` over `ExecutorWorker` actors (each
keeps its models loaded between items); the files come back as bytes and are written to
the output folder here, so workers need no shared disk.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any

from graph_runtime.executor import Executor, WorkflowInvalid
from graph_runtime.scale.sweep import as_overrides
from graph_runtime.workflow import Workflow, apply_overrides

MANIFEST = "manifest.jsonl"
Record = dict[str, Any]


@dataclass
class BatchItem:
    """One combination of the sweep, ready to run."""

    index: int
    overrides: dict[str, Any]
    workflow: Workflow
    signature: str


@dataclass
class BatchSummary:
    """What a batch did: items run, skipped as done, failed; and its records."""

    executed: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    records: list[Record] = field(default_factory=list)


def item_signature(executor: Executor, wf: Workflow, output_dir: Path) -> str:
    """One hash for everything the item's outputs depend on."""
    sigs = executor.signatures(wf, output_dir=output_dir)
    text = json.dumps(sorted(sigs.values()))
    return blake2b(text.encode(), digest_size=16).hexdigest()


def plan_items(executor: Executor, wf: Workflow, combos: list[dict[str, Any]],
               output_dir: Path) -> list[BatchItem]:
    """The items; raises `WorkflowInvalid` for a combination that does not validate."""
    items = []
    for index, values in enumerate(combos):
        item_wf = wf.copy()
        errors = apply_overrides(item_wf, as_overrides(values))
        if errors:
            raise WorkflowInvalid(errors)
        items.append(BatchItem(index, values, item_wf,
                               item_signature(executor, item_wf, output_dir)))
    return items


def read_manifest(output_dir: Path) -> dict[int, Record]:
    """The last record of each item index (a torn last line is ignored)."""
    path = output_dir / MANIFEST
    records: dict[int, Record] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("index"), int):
            records[record["index"]] = record
    return records


def is_done(item: BatchItem, record: Record | None, output_dir: Path) -> bool:
    return (record is not None and record.get("status") == "success"
            and record.get("signature") == item.signature
            and all((output_dir / f).is_file() for f in record.get("files", [])))


def _relative(paths: Iterable[str], output_dir: Path) -> list[str]:
    root = output_dir.resolve()
    out = []
    for p in paths:
        resolved = Path(p).resolve()
        out.append(resolved.relative_to(root).as_posix() if resolved.is_relative_to(root)
                   else str(resolved))
    return out


def make_record(item: BatchItem, status: str, files: list[str], seconds: float,
                worker: str, error: Any = None) -> Record:
    return {"index": item.index, "overrides": item.overrides, "signature": item.signature,
            "status": status, "files": files, "seconds": round(seconds, 4),
            "worker": worker, "error": error}


class Manifest:
    """Appends records as items finish, one flushed line each."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / MANIFEST

    def add(self, record: Record) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")


def run_local(executor: Executor, items: list[BatchItem], output_dir: Path,
              emit: Callable[[Record], None]) -> None:
    """One executor, one item after the other (its cache keeps the models loaded)."""
    for item in items:
        result = executor.run(item.workflow, output_dir=output_dir)
        status = "success" if result.ok else "error"
        emit(make_record(item, status, _relative(result.files, output_dir), result.seconds,
                         "local", result.error))


def run_batch(executor: Executor, wf: Workflow, combos: list[dict[str, Any]],
              output_dir: Path, *, backend: str = "local",
              pool: Callable[[list[BatchItem], Path, Callable[[Record], None]], None]
              | None = None, on_record: Callable[[Record], None] | None = None
              ) -> BatchSummary:
    """Run the items not already done; `pool` runs them elsewhere (see `ray_batch`)."""
    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    items = plan_items(executor, wf, combos, output_dir)
    previous = read_manifest(output_dir)
    todo = [i for i in items if not is_done(i, previous.get(i.index), output_dir)]
    summary = BatchSummary(skipped=len(items) - len(todo))
    manifest = Manifest(output_dir)

    def emit(record: Record) -> None:
        manifest.add(record)
        summary.records.append(record)
        summary.executed += 1
        summary.failed += record["status"] != "success"
        if on_record is not None:
            on_record(record)

    if backend == "local" or pool is None:
        run_local(executor, todo, output_dir, emit)
    else:
        pool(todo, output_dir, emit)
    summary.seconds = time.perf_counter() - started
    return summary
