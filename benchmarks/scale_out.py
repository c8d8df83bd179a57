"""Throughput of `noodle batch` on the tiny model: local backend, 1 and 2 Ray workers.

Every worker (and the local run) is limited to one torch thread, so on an N-core machine
N workers can scale. Each backend is warmed up first (models loaded once per worker), then
times `--items` seeds of txt2img. Also measured: the per-prompt dispatch overhead (an
actor round trip, and Ray's per-item cost over the local backend), from which a scaling
model estimates where the server's queue or the network becomes the bottleneck.

    .venv/bin/python benchmarks/scale_out.py [--items 16] [--steps 8] [--gpu-seconds 2.0]
Target: >= 1.6x from 1 to 2 workers on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import ray
import torch

import nodes  # noqa: F401 - registers the node types
from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from graph_runtime.scale.batch import run_batch
from graph_runtime.scale.ray_batch import RayPool
from graph_runtime.scale.worker import WorkerSettings
from graph_runtime.settings import Folders
from graph_runtime.workflow import Workflow, apply_overrides, load_workflow

REPO = Path(__file__).resolve().parents[1]


def workflow(steps: int) -> Workflow:
    wf = load_workflow(REPO / "workflows" / "txt2img.json")
    apply_overrides(wf, [f"5.steps={steps}"])
    return wf


def seeds(start: int, count: int) -> list[dict[str, Any]]:
    return [{"4.seed": s} for s in range(start, start + count)]


def cpu_seconds(pool: RayPool | None) -> float:
    """CPU time used so far by the workers (this process for the local backend)."""
    if pool is None:
        return time.process_time()
    pids = [ray.get(a.ping.remote())["pid"] for a in pool.actors]
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def timed(executor: Executor, wf: Workflow, items: int, warm: int, pool: RayPool | None,
          root: Path, name: str) -> tuple[float, float]:
    """Items per second after a warm-up batch of `warm` items, and CPU seconds per item
    (the work itself: on a busy machine wall time also counts others' use of the cores)."""
    run_batch(executor, wf, seeds(10_000, warm), root / f"{name}-warm", pool=pool,
              backend="ray" if pool else "local")
    cpu, started = cpu_seconds(pool), time.perf_counter()
    summary = run_batch(executor, wf, seeds(0, items), root / name, pool=pool,
                        backend="ray" if pool else "local")
    seconds = time.perf_counter() - started
    assert summary.failed == 0 and summary.executed == items
    return items / seconds, (cpu_seconds(pool) - cpu) / items


def cached_seconds(executor: Executor, wf: Workflow, items: int, pool: RayPool | None,
                   root: Path, name: str) -> float:
    """Seconds per prompt whose every node is cached where it runs (the seeds `timed`
    ran): what is left is the dispatch, the event relay and the file transfer."""
    started = time.perf_counter()
    run_batch(executor, wf, seeds(0, items), root / f"{name}-cached", pool=pool,
              backend="ray" if pool else "local")
    return (time.perf_counter() - started) / items


@ray.remote(num_cpus=1)
def _burn(n: int) -> float:
    started, x = time.perf_counter(), 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - started


def core_ceiling(n: int = 10_000_000) -> float:
    """The speed-up two CPU-bound tasks get on this machine right now (2.0 on two idle
    cores): the most two workers can show, whatever the backend does."""
    ray.get([_burn.remote(1000), _burn.remote(1000)])  # both worker processes started
    started = time.perf_counter()
    ray.get(_burn.remote(n))
    one = time.perf_counter() - started
    started = time.perf_counter()
    ray.get([_burn.remote(n), _burn.remote(n)])
    return 2 * one / (time.perf_counter() - started)


def round_trip(pool: RayPool, n: int = 200) -> float:
    actor = pool.actors[0]
    ray.get(actor.ping.remote())
    started = time.perf_counter()
    for _ in range(n):
        ray.get(actor.ping.remote())
    return (time.perf_counter() - started) / n


def scaling_table(gpu_seconds: float, overhead: float, png_bytes: int,
                  link_bytes_per_s: float) -> str:
    """Prompts/s for G GPUs: min(G / gpu_seconds, 1 / overhead, link / png_bytes)."""
    rows = ["| GPUs | GPU-bound prompts/s | server-bound | network-bound | expected | "
            "bottleneck |", "|---|---|---|---|---|---|"]
    server, network = 1 / overhead, link_bytes_per_s / png_bytes
    for gpus in (1, 8, 64):
        compute = gpus / gpu_seconds
        expected = min(compute, server, network)
        limit = ("GPUs" if expected == compute else
                 "server queue" if expected == server else "network")
        rows.append(f"| {gpus} | {compute:.1f} | {server:.0f} | {network:.0f} | "
                    f"{expected:.1f} | {limit} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--gpu-seconds", type=float, default=2.0,
                        help="per-prompt GPU time assumed for the scaling model")
    parser.add_argument("--png-bytes", type=int, default=450_000,
                        help="output size assumed for the scaling model (512x512 PNG)")
    parser.add_argument("--link-gbit", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    wf = workflow(args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        executor = Executor(REGISTRY, folders=Folders(output=root / "local", temp_dir=root / "t"))
        local, local_cpu = timed(executor, wf, args.items, 1, None, root, "local")
        local_cached = cached_seconds(executor, wf, args.items, None, root, "local")
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
        rates: dict[int, float] = {}
        cpus: dict[int, float] = {}
        trip = ray_cached = 0.0
        ceiling = core_ceiling()
        for workers in (1, 2):
            pool = RayPool(workers, WorkerSettings(torch_threads=1))
            try:
                rates[workers], cpus[workers] = timed(executor, wf, args.items, workers,
                                                      pool, root, f"ray{workers}")
                if workers == 1:
                    trip = round_trip(pool)
                    ray_cached = cached_seconds(executor, wf, args.items, pool, root, "ray1")
            finally:
                pool.close()
        ray.shutdown()
    overhead = max(ray_cached, trip)  # all of a prompt's cost but its compute
    print(f"tiny model, {args.steps} steps, 64x64, {args.items} items, 1 torch thread each; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (others' work "
          "on a shared machine takes cores from the workers)")
    print(f"local backend   {local:6.2f} items/s   {local_cpu:.3f} CPU s/item")
    print(f"ray, 1 worker   {rates[1]:6.2f} items/s   {cpus[1]:.3f} CPU s/item")
    print(f"ray, 2 workers  {rates[2]:6.2f} items/s   {cpus[2]:.3f} CPU s/item   speed-up "
          f"1->2: {rates[2] / rates[1]:.2f}x measured (target >= 1.6x); "
          f"{2 * cpus[1] / cpus[2]:.2f}x on idle cores (from CPU s/item)")
    print(f"two CPU-bound tasks on this machine now: {ceiling:.2f}x (the ceiling for 2 "
          "workers)")
    print(f"actor round trip {trip * 1e3:.2f} ms; a fully cached prompt: local "
          f"{local_cached * 1e3:.1f} ms, Ray {ray_cached * 1e3:.1f} ms; per-prompt dispatch "
          f"overhead {overhead * 1e3:.1f} ms")
    print(scaling_table(args.gpu_seconds, overhead, args.png_bytes,
                        args.link_gbit * 1e9 / 8))


if __name__ == "__main__":
    main()
