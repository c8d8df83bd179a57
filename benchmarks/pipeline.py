"""Whole txt2img, warm: our graph (the Executor, in-process) against StableDiffusionPipeline.

    .venv/bin/python benchmarks/pipeline.py [--only tiny|sd15] [--runs 5] [--rounds 2]
        [--sd15-runs 1] [--sd15-rounds 1] [--sd15-steps 10] [--sd15-size 256]
        [--scheduler EulerDiscreteScheduler] [--threads 1] [--keep DIR]
        [--previews auto|latent|full]

Two models, the same weights on both sides:

* `tiny`: the embedded model (models/noodle-tiny) at its native 64x64, 25 steps, where the
  per-step overhead of the engine and the sampler loop dominates;
* `sd15`: an SD1.5-size random-weight model (benchmarks/_sd15.py: the test suite's
  single file, converted once into a diffusers folder in a temporary directory or `--keep`)
  at 256x256, 10 steps, where the UNet dominates.

Both use CFG 7.5 and the shipped txt2img workflow (workflows/txt2img.json) with a
SwapScheduler in front of Denoise (Euler by default: one UNet call per step on both sides;
`--scheduler model` keeps the model's own). Each implementation runs in its own processes
(`--rounds`, alternating who goes first): load once, one warm-up run (`--warmup-steps`),
then timed runs each with another seed, so on our side only RandomLatents, Denoise,
VAEDecode and SaveImage run again (the loaded model and the prompt encodings come from the
executor's cache; diffusers encodes the prompts on every call). Reported per
implementation (medians over all timed runs):

* per step: the time between the first and the last step's progress event (ours) or
  `callback_on_step_end` (diffusers), over steps - 1 (steady state; the first step is out);
* sampling: our Denoise node's time; diffusers' from `set_timesteps` to the last callback;
* decode: our VAEDecode node's time; diffusers' from the last callback until the pipeline
  returns (decode and conversion to PIL);
* total: the whole run, saving a PNG on both sides.

Wall and CPU time (of the whole process) are both shown: on a busy machine wall time
moves with the load, CPU time much less. Our runs make step previews as `Executor.run`
does by default (none unless asked); `--previews auto|latent|full` asks for one every step,
as a connected canvas does, rendered in that `NOODLE_PREVIEWS` mode. Target: per step
<= 1.0x diffusers on both models. The two last images are compared too.
Defaults take about 3-4 minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._sd15 import read_pixels, sd15_checkpoint, sd15_folder  # noqa: E402

PROMPT, NEGATIVE, GUIDANCE = "a red circle", "", 7.5
TINY = REPO / "models" / "noodle-tiny"


def graph(source: str, size: int, steps: int, seed: int, scheduler: str) -> dict[str, Any]:
    """workflows/txt2img.json set to this model, size, steps, seed (and scheduler)."""
    wf = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    nodes = wf["nodes"]
    nodes["1"]["inputs"]["source"] = source
    nodes["2"]["inputs"]["text"], nodes["3"]["inputs"]["text"] = PROMPT, NEGATIVE
    nodes["4"]["inputs"].update(width=size, height=size, batch_size=1, seed=seed)
    nodes["5"]["inputs"].update(steps=steps, guidance_scale=GUIDANCE)
    nodes["7"]["inputs"]["filename_prefix"] = "bench"
    if scheduler != "model":
        nodes["s"] = {"type": "SwapScheduler", "inputs": {
            "scheduler": {"from": "1", "output": "scheduler"}, "type": scheduler}}
        nodes["5"]["inputs"]["scheduler"] = {"from": "s", "output": "scheduler"}
    return wf


Stamp = tuple[float, float]  # (wall, CPU time of the process)


def now() -> Stamp:
    return time.perf_counter(), time.process_time()


def spans(key: str, first: Stamp, last: Stamp, count: int = 1) -> dict[str, float]:
    """`key` (wall) and `key`_cpu between two stamps, divided by `count`."""
    n = max(count, 1)
    return {key: (last[0] - first[0]) / n, f"{key}_cpu": (last[1] - first[1]) / n}


def per_step(stamps: list[Stamp]) -> dict[str, float]:
    """Steady-state time per step: first to last step boundary over steps - 1."""
    return spans("per_step", stamps[0], stamps[-1], len(stamps) - 1)


def run_ours(job: dict[str, Any]) -> dict[str, Any]:
    """Load through the graph once, warm up, then time `runs` runs (see the docstring)."""
    import nodes  # noqa: F401  (registers the node library)
    from graph_runtime import Folders
    from graph_runtime.cache import OutputCache
    from graph_runtime.executor import Executor
    from graph_runtime.registry import REGISTRY

    out = Path(job["out"])
    folders = Folders(output=out / "ours", input=out / "input", models=REPO / "models",
                      user=out / "user")
    executor = Executor(REGISTRY, OutputCache(), folders)
    if job.get("previews"):
        from graph_runtime.context import PreviewPolicy

        executor.previews = PreviewPolicy(every=1)  # as for a connected canvas
    events: list[tuple[Stamp, dict[str, Any]]] = []

    def run(steps: int, seed: int) -> dict[str, float]:
        events.clear()
        wf = graph(job["source"], job["size"], steps, seed, job["scheduler"])
        t0 = now()
        result = executor.run(wf, on_event=lambda e: events.append((now(), e)))
        if not result.ok:
            raise RuntimeError(json.dumps(result.error)[-3000:])
        return spans("total", t0, now())

    def node_span(key: str, node_type: str) -> dict[str, float]:
        marks = {e["type"]: t for t, e in events if e.get("node_type") == node_type
                 and e["type"] in ("node_started", "node_finished")}
        return spans(key, marks["node_started"], marks["node_finished"])

    first = run(job["warmup_steps"], 10_000)
    runs = []
    for i in range(job["runs"]):
        figures = run(job["steps"], job["seed"] + i)
        figures.update(per_step([t for t, e in events if e["type"] == "progress"]))
        figures.update(node_span("sampling", "Denoise"))
        figures.update(node_span("decode", "VAEDecode"))
        runs.append(figures)
    image = sorted((out / "ours").glob("bench*.png"), key=os.path.getmtime)[-1]
    return {"first_run_s": first["total"], "runs": runs, "image": str(image)}


def instrument(pipe: Any) -> Callable[..., dict[str, Any]]:
    """`pipe(**kwargs)` timed, wall and CPU: total, per step, sampling (from `set_timesteps`
    to the last `callback_on_step_end`) and decode (from there until the call returns)."""
    stamps: list[Stamp] = []
    started: list[Stamp] = []
    set_timesteps = pipe.scheduler.set_timesteps

    def timed_set_timesteps(*args: Any, **kwargs: Any) -> Any:
        started.append(now())
        return set_timesteps(*args, **kwargs)

    pipe.scheduler.set_timesteps = timed_set_timesteps

    def on_step(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        stamps.append(now())
        return kwargs

    def call(**kwargs: Any) -> dict[str, Any]:
        stamps.clear()
        started.clear()
        t0 = now()
        output = pipe(**kwargs, callback_on_step_end=on_step)
        returned = now()
        return {**spans("total", t0, returned), **per_step(stamps),
                **spans("sampling", started[0], stamps[-1]),
                **spans("decode", stamps[-1], returned), "output": output}

    return call


def run_diffusers(job: dict[str, Any]) -> dict[str, Any]:
    """StableDiffusionPipeline on the same folder: warm up, then time `runs` calls."""
    import diffusers
    import torch

    t0 = time.perf_counter()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        job["folder"], torch_dtype=torch.float32, safety_checker=None,
        requires_safety_checker=False)
    if job["scheduler"] != "model":
        pipe.scheduler = getattr(diffusers, job["scheduler"]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    call = instrument(pipe)
    path = Path(job["out"]) / "diffusers.png"

    def run(steps: int, seed: int) -> dict[str, Any]:
        t0 = now()
        timing = call(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps,
                      guidance_scale=GUIDANCE, width=job["size"], height=job["size"],
                      generator=torch.Generator("cpu").manual_seed(seed))
        timing.pop("output").images[0].save(path)
        timing.update(spans("total", t0, now()))
        return timing

    run(job["warmup_steps"], 10_000)
    runs = [run(job["steps"], job["seed"] + i) for i in range(job["runs"])]
    return {"first_run_s": load_s, "runs": runs, "image": str(path)}


def spawn(impl: str, job: dict[str, Any], threads: int) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if job.get("previews"):
        env["NOODLE_PREVIEWS"] = job["previews"]
    proc = subprocess.run([sys.executable, __file__, "--worker", impl, json.dumps(job)],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{impl} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _med(result: dict[str, Any], key: str) -> float:
    return statistics.median(r[key] for r in result["runs"])


def report(title: str, ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    diff = float(abs(read_pixels(Path(ours["image"])) - read_pixels(Path(theirs["image"]))
                     ).max()) * 255
    print(f"\n{title}; last images differ by at most {diff:.0f}/255")
    print(f"  {'':9s} {'ours wall':>12s} {'diffusers':>12s} {'ratio':>7s}   "
          f"{'ours CPU':>12s} {'diffusers':>12s} {'ratio':>7s}")
    for key in ("per_step", "sampling", "decode", "total"):
        scale, unit = (1000.0, "ms") if key in ("per_step", "decode") else (1.0, "s")
        cells = []
        for suffix in ("", "_cpu"):
            a, b = _med(ours, key + suffix), _med(theirs, key + suffix)
            cells.append(f"{a * scale:9.1f} {unit:2s} {b * scale:9.1f} {unit:2s} {a / b:6.2f}x")
        print(f"  {key:9s} " + "   ".join(cells))
    best = min(r["per_step"] for r in ours["runs"]) / min(r["per_step"] for r in theirs["runs"])
    print(f"  per step, best run each: {best:.2f}x")
    a, b = _med(ours, "per_step"), _med(theirs, "per_step")
    print(f"  target per step <= 1.0x diffusers (wall): {a / b:.2f}x "
          f"({'met' if a <= b else 'NOT met'})")


def bench(title: str, job: dict[str, Any], threads: int, rounds: int) -> None:
    """`rounds` processes per implementation, alternating who goes first so that drifting
    background load hits both alike; the timed runs of all of them are pooled."""
    print(f"running {title} ...", flush=True)
    pooled: dict[str, dict[str, Any]] = {}
    for r in range(rounds):
        for impl in ("ours", "diffusers") if r % 2 == 0 else ("diffusers", "ours"):
            result = spawn(impl, job, threads)
            if impl in pooled:
                result["runs"] = pooled[impl]["runs"] + result["runs"]
            pooled[impl] = result
    report(title, pooled["ours"], pooled["diffusers"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["tiny", "sd15"])
    parser.add_argument("--runs", type=int, default=5, help="timed runs, embedded model")
    parser.add_argument("--sd15-runs", type=int, default=1, help="timed runs, SD1.5 size")
    parser.add_argument("--rounds", type=int, default=2,
                        help="processes per implementation, embedded model")
    parser.add_argument("--sd15-rounds", type=int, default=1,
                        help="processes per implementation, SD1.5 size")
    parser.add_argument("--steps", type=int, default=25, help="steps, embedded model")
    parser.add_argument("--sd15-steps", type=int, default=10)
    parser.add_argument("--sd15-size", type=int, default=256)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--scheduler", default="EulerDiscreteScheduler",
                        help="a diffusers scheduler class name, or 'model' for the model's own")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1 keeps figures stable on a shared machine)")
    parser.add_argument("--keep", type=Path, help="folder for the SD1.5-size model (reused)")
    parser.add_argument("--previews", choices=["auto", "latent", "full"],
                        help="ask for a step preview every step, in this NOODLE_PREVIEWS "
                             "mode (default: none, as Executor.run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="noodle-pipeline-bench-") as tmp:
        common = {"scheduler": args.scheduler, "seed": args.seed,
                  "warmup_steps": args.warmup_steps, "previews": args.previews}
        if args.only in (None, "tiny"):
            job = {**common, "source": "noodle-tiny", "folder": str(TINY), "size": 64,
                   "steps": args.steps, "runs": args.runs, "out": str(Path(tmp) / "tiny")}
            bench(f"Embedded model, 64x64, {args.steps} steps, CFG {GUIDANCE}, "
                  f"{args.scheduler}, CPU fp32, {args.threads} thread(s), median of "
                  f"{args.runs * args.rounds}", job, args.threads, args.rounds)
        if args.only in (None, "sd15"):
            root = args.keep or Path(tmp)
            folder = sd15_folder(sd15_checkpoint(), root / "sd15-diffusers")
            job = {**common, "source": str(folder), "folder": str(folder),
                   "size": args.sd15_size, "steps": args.sd15_steps, "runs": args.sd15_runs,
                   "out": str(Path(tmp) / "sd15")}
            bench(f"SD1.5-size random weights, {args.sd15_size}x{args.sd15_size}, "
                  f"{args.sd15_steps} steps, CFG {GUIDANCE}, {args.scheduler}, CPU fp32, "
                  f"{args.threads} thread(s), median of {args.sd15_runs * args.sd15_rounds}",
                  job, args.threads, args.sd15_rounds)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        job_ = json.loads(sys.argv[3])
        Path(job_["out"]).mkdir(parents=True, exist_ok=True)
        worker = run_ours if sys.argv[2] == "ours" else run_diffusers
        print(json.dumps(worker(job_)))
    else:
        main()
