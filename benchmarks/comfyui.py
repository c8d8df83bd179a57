"""ComfyUI's default workflow, cold, on an SD1.5-size checkpoint: ours, diffusers and ComfyUI.

    .venv/bin/python benchmarks/comfyui.py [--steps 10] [--size 256] [--cfg 7]
        [--threads 1] [--keep DIR] [--models DIR]

One random-weight checkpoint with SD1.5's exact layout (benchmarks/_sd15.py: the test
suite's single .safetensors, cached where the ComfyUI parity tests keep it), 256x256,
10 Euler steps (scheduler "normal"), CFG 7, seed 42, run once by each system in its own
fresh process (so each one's peak RSS is its own, read with `wait4`):

* ours: ComfyUI's API prompt (CheckpointLoaderSimple -> CLIPTextEncode x2 ->
  EmptyLatentImage -> KSampler -> VAEDecode) imported and run by our executor with our
  ComfyUI node pack;
* ComfyUI: the same prompt evaluated with ComfyUI's own node classes, in-process on the CPU,
  from the oracle checkout (../shared/oracles/ComfyUI or NOODLE_COMFYUI_ORACLE);
* diffusers: StableDiffusionPipeline with EulerDiscreteScheduler on the same weights
  (converted once into a diffusers folder, in a temporary directory or `--keep`).

Reported for each: end to end (load the checkpoint, encode both prompts, sample, decode; the
imports before it are shown apart), sampling (KSampler / the pipeline's denoising loop),
time per step, decode, and the process's peak RSS; ratios against ComfyUI. Target: ours
end to end <= 1.0x ComfyUI. The largest difference between our image and ComfyUI's is
printed too (1/255 steps; the parity tests hold it to <= 2). About 3 minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._sd15 import DEFAULT_MODELS, sd15_checkpoint, sd15_folder  # noqa: E402
from benchmarks.cli import run_child  # noqa: E402
from tests.support.comfy_oracle import (  # noqa: E402
    NEGATIVE,
    POSITIVE,
    default_prompt,
    oracle_available,
    oracle_path,
)

SYSTEMS = ("ours", "comfyui", "diffusers")
STARTED = time.perf_counter()


def _per_step(stamps: list[float]) -> float:
    return (stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1)


def run_ours(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    import nodes  # noqa: F401  (registers the node library and its importers)
    from graph_runtime import Folders
    from graph_runtime.cache import OutputCache
    from graph_runtime.executor import Executor
    from graph_runtime.registry import REGISTRY
    from graph_runtime.workflow import import_workflow

    work = Path(job["out"])
    folders = Folders(output=work / "output", input=work / "input",
                      models=Path(job["models"]), user=work / "user")
    executor = Executor(REGISTRY, OutputCache(), folders)
    workflow, _ = import_workflow(job["prompt"], REGISTRY)
    events: list[tuple[float, dict[str, Any]]] = []
    imported = time.perf_counter() - STARTED
    t0 = time.perf_counter()
    result = executor.run(workflow, targets=["8"],
                          on_event=lambda e: events.append((time.perf_counter(), e)))
    end_to_end = time.perf_counter() - t0
    if not result.ok:
        raise RuntimeError(json.dumps(result.error)[-3000:])
    seconds: dict[str, float] = {}
    for _, e in events:
        if e["type"] == "node_finished":
            seconds[e["node_type"]] = seconds.get(e["node_type"], 0.0) + e["seconds"]
    (image,) = result.outputs["8"].values()
    torch.save(image.pixels.float().cpu(), work / "ours.pt")
    return {"imports": imported, "end_to_end": end_to_end,
            "load": seconds["CheckpointLoaderSimple"], "sampling": seconds["KSampler"],
            "per_step": _per_step([t for t, e in events if e["type"] == "progress"]),
            "decode": seconds["VAEDecode"], "image": str(work / "ours.pt")}


def run_comfyui(job: dict[str, Any]) -> dict[str, Any]:
    from tests.support.comfy_workflow_runner import _Evaluator, _import_comfy_nodes

    os.environ.setdefault("TQDM_DISABLE", "1")
    comfy_nodes = _import_comfy_nodes(Path(job["oracle"]))
    import comfy.utils
    import folder_paths
    import torch

    folder_paths.add_model_folder_path("checkpoints", str(Path(job["models"]) / "checkpoints"),
                                       is_default=True)
    stamps: list[float] = []
    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: stamps.append(time.perf_counter()))
    evaluator = _Evaluator(comfy_nodes.NODE_CLASS_MAPPINGS)
    prompt = job["prompt"]
    imported = time.perf_counter() - STARTED
    marks = [time.perf_counter()]
    steps: list[float] = []
    with torch.inference_mode():
        for node_id in ("4", "6", "7", "5", "3", "8"):  # load, encode x2, latent, sample, decode
            stamps.clear()
            evaluator.output(prompt, node_id)
            marks.append(time.perf_counter())
            if node_id == "3":
                steps = list(stamps)
        image = evaluator.output(prompt, "8")[0]
    work = Path(job["out"])
    torch.save(image.float().cpu(), work / "comfyui.pt")
    return {"imports": imported, "end_to_end": marks[-1] - marks[0],
            "load": marks[1] - marks[0], "sampling": marks[5] - marks[4],
            "per_step": _per_step(steps), "decode": marks[6] - marks[5],
            "image": str(work / "comfyui.pt")}


def run_diffusers(job: dict[str, Any]) -> dict[str, Any]:
    import diffusers
    import torch

    from benchmarks.pipeline import instrument

    imported = time.perf_counter() - STARTED
    t0 = time.perf_counter()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        job["folder"], torch_dtype=torch.float32, safety_checker=None,
        requires_safety_checker=False)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t0
    call = instrument(pipe)
    timing = call(prompt=POSITIVE, negative_prompt=NEGATIVE, num_inference_steps=job["steps"],
                  guidance_scale=job["cfg"], width=job["size"], height=job["size"],
                  generator=torch.Generator("cpu").manual_seed(job["seed"]), output_type="pt")
    return {"imports": imported, "end_to_end": time.perf_counter() - t0, "load": load,
            "sampling": timing["sampling"], "per_step": timing["per_step"],
            "decode": timing["decode"], "image": None}


def spawn(system: str, job: dict[str, Any], threads: int) -> dict[str, Any]:
    """One system in a fresh process; its figures, plus its wall time and peak RSS."""
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    result = Path(job["out"]) / f"{system}.json"
    sample = run_child([sys.executable, __file__, "--only", system, "--job", json.dumps(job),
                        "--result", str(result)])
    if sample.returncode != 0:
        raise SystemExit(f"{system} failed:\n{sample.stderr[-3000:]}")
    figures = json.loads(result.read_text())
    figures.update(process=sample.seconds, peak_mib=sample.peak_mib)
    return figures


def report(title: str, runs: dict[str, dict[str, Any]]) -> None:
    import torch

    diff = float((torch.load(runs["ours"]["image"]) - torch.load(runs["comfyui"]["image"])
                  ).abs().max()) * 255
    print(f"\n{title}\nours vs ComfyUI image: max difference {diff:.2f}/255")
    rows = [("imports", "imports", "s"), ("end to end", "end_to_end", "s"),
            ("  load", "load", "s"), ("  sampling", "sampling", "s"),
            ("  per step", "per_step", "s"), ("  decode", "decode", "s"),
            ("whole process", "process", "s"), ("peak RSS", "peak_mib", "MiB")]
    print(f"{'':16s}" + "".join(f"{s:>12s}" for s in SYSTEMS)
          + f"{'ours/comfy':>12s}{'ours/diff.':>12s}")
    for label, key, unit in rows:
        values = [runs[s][key] for s in SYSTEMS]
        cells = "".join(f"{v:>8.2f} {unit:3s}" if unit == "s" else f"{v:>8.0f} {unit:3s}"
                        for v in values)
        print(f"{label:16s}{cells}{values[0] / values[1]:>11.2f}x{values[0] / values[2]:>11.2f}x")
    ratio = runs["ours"]["end_to_end"] / runs["comfyui"]["end_to_end"]
    print(f"target: ours end to end <= 1.0x ComfyUI: {ratio:.2f}x "
          f"({'met' if ratio <= 1.0 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1 keeps figures stable on a shared machine)")
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS,
                        help="models folder holding checkpoints/ (the file is built there)")
    parser.add_argument("--keep", type=Path, help="folder for the diffusers copy (reused)")
    parser.add_argument("--only", choices=SYSTEMS, help="run one system (what each child does)")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        job = json.loads(args.job)
        worker = {"ours": run_ours, "comfyui": run_comfyui, "diffusers": run_diffusers}
        args.result.write_text(json.dumps(worker[args.only](job)))
        return
    if not oracle_available():
        raise SystemExit(f"no ComfyUI checkout at {oracle_path()} (set NOODLE_COMFYUI_ORACLE)")
    models = args.models.resolve()
    checkpoint = sd15_checkpoint(models)
    with tempfile.TemporaryDirectory(prefix="noodle-comfyui-bench-") as tmp:
        folder = sd15_folder(checkpoint, (args.keep or Path(tmp)) / "sd15-diffusers")
        job = {"prompt": default_prompt(checkpoint.name, "euler", "normal", steps=args.steps,
                                        cfg=args.cfg, seed=args.seed, size=args.size),
               "models": str(models), "oracle": str(oracle_path()), "folder": str(folder),
               "steps": args.steps, "cfg": args.cfg, "size": args.size, "seed": args.seed,
               "out": tmp}
        systems = [args.only] if args.only else list(SYSTEMS)
        runs = {}
        for system in systems:
            print(f"running {system} ...", flush=True)
            runs[system] = spawn(system, job, args.threads)
        if len(runs) == len(SYSTEMS):
            report(f"SD1.5-size checkpoint, {args.size}x{args.size}, {args.steps} Euler steps, "
                   f"CFG {args.cfg:g}, CPU fp32, {args.threads} thread(s), one cold run each",
                   runs)
        else:
            print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
