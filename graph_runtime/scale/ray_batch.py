"""`noodle batch --backend ray`: the batch's items on a `ray.util.ActorPool` of workers.

Ray's pool does the scheduling (an item goes to the next idle actor); this module only
turns items into calls and results into manifest records, writing the files each worker
sends back into the output folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.util import ActorPool

from graph_runtime.scale.batch import BatchItem, Record, make_record
from graph_runtime.scale.placement import FilePlacer
from graph_runtime.scale.ray_backend import pool_shape, start_ray, worker_class
from graph_runtime.scale.worker import WorkerSettings


class RayPool:
    """`workers` actors, started once and reused for every batch run through `__call__`."""

    def __init__(self, workers: int | None, settings: WorkerSettings, *,
                 address: str | None = None, num_gpus: float | None = None,
                 num_cpus: float = 1, ray_options: dict[str, Any] | None = None) -> None:
        self.owns_ray = start_ray(address, **(ray_options or {}))
        workers, gpus = pool_shape(workers, num_gpus)
        remote = worker_class(gpus, num_cpus)
        self.actors = [remote.remote(f"worker-{i}", settings) for i in range(workers)]
        ray.get([a.ping.remote() for a in self.actors])  # up before any timing starts

    def __call__(self, items: list[BatchItem], output_dir: Path,
                 emit: Callable[[Record], None]) -> None:
        placer = FilePlacer({"output": output_dir, "temp": output_dir / "temp"})
        by_id = {str(item.index): item for item in items}
        pool = ActorPool(self.actors)
        calls = pool.map_unordered(
            lambda actor, item: actor.run_batch.remote(str(item.index), item.workflow.to_dict()),
            items)
        for payload in calls:
            item = by_id[payload["run_id"]]
            emit(self._record(item, payload, placer, output_dir))

    @staticmethod
    def _record(item: BatchItem, payload: dict[str, Any], placer: FilePlacer,
                output_dir: Path) -> Record:
        worker = payload.get("worker", "")
        written = [placer.place(worker, sent) for sent in payload.get("worker_files", [])]
        files = [p.resolve().relative_to(output_dir.resolve()).as_posix() for p in written
                 if p.resolve().is_relative_to(output_dir.resolve())]
        failure = payload.get("failure") or payload.get("invalid")
        ok = bool(payload.get("ok")) and failure is None
        return make_record(item, "success" if ok else "error", files,
                           float(payload.get("seconds", 0.0)), worker,
                           payload.get("error") or failure)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.owns_ray:
            ray.shutdown()
