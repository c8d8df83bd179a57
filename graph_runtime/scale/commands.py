"""The scale-out side of the `noodle` command: `batch`, and `serve --backend ray`'s backend.

Kept out of `cli` so that the plain commands never import any of it; Ray itself is
imported only when `--backend ray` asks for it, with a readable error where it is missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from graph_runtime import cli
from graph_runtime.executor import Executor, WorkflowInvalid
from graph_runtime.scale.batch import MANIFEST, run_batch
from graph_runtime.scale.sweep import SweepError, combinations, parse_sweep
from graph_runtime.scale.worker import WorkerSettings
from graph_runtime.settings import SettingsError


def _ray_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise SettingsError(f"--backend ray needs Ray: pip install -e \".[ray]\" ({exc})"
                            ) from exc


def worker_settings(args: argparse.Namespace, executor: Executor, names: list[str]
                    ) -> WorkerSettings:
    """What each worker builds its executor from. On a local Ray instance the workers use
    this machine's folders; on a cluster each worker uses its own (its models/ folder)."""
    local = not args.ray_address
    folders = executor.folders
    paths_file = folders.model_paths_file
    return WorkerSettings(
        nodes=",".join(names), budgets=cli._budgets(args), torch_threads=args.torch_threads,
        models=str(folders.models.resolve()) if local else None,
        input=str(folders.input.resolve()) if local else None,
        model_paths_file=str(paths_file.resolve()) if local and paths_file else None)


def ray_backend(args: argparse.Namespace, executor: Executor, names: list[str]) -> Any:
    """`serve --backend ray`: the backend the server's queue dispatches to."""
    module = _ray_module("graph_runtime.scale.ray_backend")
    return module.RayBackend(executor, args.workers, address=args.ray_address,
                             settings=worker_settings(args, executor, names),
                             num_gpus=args.worker_gpus)


def batch(args: argparse.Namespace) -> int:
    """Run a workflow over a sweep, writing files and a manifest; resumable."""
    names = cli.load_node_library(args.nodes)
    executor = cli.executor_from_args(args)
    wf, errors = cli._load(args)
    if errors or wf is None:
        return cli._report_invalid(errors, args.json)
    try:
        sweeps = [parse_sweep(s, Path.cwd()) for s in args.sweep or []]
        combos = combinations(sweeps, args.zip)
    except SweepError as exc:
        return cli._fail(args, cli.EXIT_INVALID, cli._error("invalid_sweep", str(exc)))
    pool = None
    if args.backend == "ray":
        ray_batch = _ray_module("graph_runtime.scale.ray_batch")
        pool = ray_batch.RayPool(args.workers, worker_settings(args, executor, names),
                                 address=args.ray_address, num_gpus=args.worker_gpus)
    on_record = cli._print_json if args.json else None
    try:
        summary = run_batch(executor, wf, combos, Path(args.output_dir).resolve(),
                            backend=args.backend, pool=pool, on_record=on_record)
    except WorkflowInvalid as exc:
        return cli._report_invalid(exc.errors, args.json)
    finally:
        if pool is not None:
            pool.close()
    if args.json:
        cli._print_json({"type": "batch_finished", "items": len(combos),
                         "executed": summary.executed, "skipped": summary.skipped,
                         "failed": summary.failed, "seconds": summary.seconds})
    else:
        print(f"{summary.executed} executed, {summary.skipped} already done, "
              f"{summary.failed} failed in {summary.seconds:.2f}s "
              f"(manifest: {Path(args.output_dir) / MANIFEST})", file=sys.stderr)
    return cli.EXIT_OK if summary.failed == 0 else cli.EXIT_FAILED
