"""Cold start of the `noodle` command, and a whole `noodle run` against a diffusers script.

    .venv/bin/python benchmarks/cli.py [--repeats 5] [--run-repeats 3] [--threads 1]
                                       [--workflow workflows/txt2img.json] [--skip-run]

Every figure is one fresh process, timed from spawn to exit (wall seconds; its CPU time
beside, steadier on a busy machine), with the peak RSS of that process alone (its own
rusage from `wait4`); medians over the repeats.

* `noodle --help`, `noodle validate WORKFLOW`, `noodle nodes`: wall, peak RSS, and whether
  the command imported torch (a second run of the same command through a wrapper that
  reports `sys.modules`). Targets: validate <= 0.5 s and <= 80 MB RSS.
* `noodle run WORKFLOW` (import, load, every step, save) against a plain diffusers script in
  its own process: import diffusers, `StableDiffusionPipeline.from_pretrained` on the same
  model folder, the prompt, negative prompt, steps, size, guidance and seed read from the
  workflow, save a PNG. Both run with `--threads` intra-op threads (default 1: on a busy
  machine two spinning threads make a run vary tenfold). The two alternate so background
  load hits both alike; the ratio is `noodle run / diffusers script`, target <= 1.1x.
  The two PNGs are compared too (largest difference in 1/255 steps), so a faster run that
  made another image shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._sd15 import read_pixels  # noqa: E402

NOODLE = REPO / ".venv" / "bin" / "noodle"
TORCH_PROBE = textwrap.dedent("""
    import sys
    from graph_runtime.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
    print("torch imported:", "torch" in sys.modules, file=sys.stderr)
""")
DIFFUSERS_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import diffusers
    job = json.loads(sys.argv[1])
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        job["model"], safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt=job["prompt"], negative_prompt=job["negative"],
                 num_inference_steps=job["steps"], guidance_scale=job["guidance"],
                 width=job["width"], height=job["height"],
                 num_images_per_prompt=job["batch"],
                 generator=torch.Generator("cpu").manual_seed(job["seed"])).images[0]
    image.save(job["out"])
""")


@dataclass
class Sample:
    """One finished child process."""

    seconds: float
    peak_mib: float
    returncode: int
    stderr: str
    cpu_s: float = 0.0  # user + system time of the child


def run_child(cmd: list[str], cwd: Path = REPO, env: dict[str, str] | None = None) -> Sample:
    """Spawn, wait with `wait4` (the child's own rusage, not every child's so far)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Sample(seconds, usage.ru_maxrss / 1024, proc.returncode, text,
                  usage.ru_utime + usage.ru_stime)


def measure(cmd: list[str], repeats: int, env: dict[str, str] | None = None) -> list[Sample]:
    samples = [run_child(cmd, env=env) for _ in range(repeats)]
    failed = [s for s in samples if s.returncode != 0]
    if failed:
        raise SystemExit(f"{' '.join(cmd)} exited {failed[0].returncode}:\n"
                         f"{failed[0].stderr[-3000:]}")
    return samples


def imports_torch(args: list[str]) -> bool:
    sample = run_child([sys.executable, "-c", TORCH_PROBE, *args])
    return "torch imported: True" in sample.stderr


def _median(samples: list[Sample], attr: str) -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def diffusers_job(workflow: dict[str, Any]) -> dict[str, Any]:
    """The workflow's settings as arguments of diffusers' pipeline call (txt2img shape:
    LoadPipeline, TextToConditioning x2, RandomLatents, Denoise)."""
    nodes = workflow["nodes"]
    by_type = {n["type"]: n["inputs"] for n in nodes.values()}
    denoise, latents = by_type["Denoise"], by_type["RandomLatents"]
    source = str(by_type["LoadPipeline"]["source"])
    model = Path(source) if Path(source).is_absolute() else REPO / "models" / source
    return {
        "model": str(model),
        "prompt": nodes[denoise["positive"]["from"]]["inputs"]["text"],
        "negative": nodes[denoise["negative"]["from"]]["inputs"]["text"],
        "steps": denoise["steps"], "guidance": denoise["guidance_scale"],
        "width": latents["width"], "height": latents["height"],
        "batch": latents["batch_size"], "seed": latents["seed"],
    }


def _line(label: str, samples: list[Sample], torch_loaded: bool | None = None) -> str:
    torch_note = "" if torch_loaded is None else f"   torch imported: {torch_loaded}"
    return (f"  {label:34s} {_median(samples, 'seconds'):7.3f} s (CPU "
            f"{_median(samples, 'cpu_s'):6.3f} s)   peak RSS "
            f"{_median(samples, 'peak_mib'):7.1f} MiB{torch_note}")


def cold_start(workflow: Path, repeats: int) -> None:
    print(f"Cold start, fresh process each, median of {repeats}:")
    commands = {"noodle --help": ["--help"],
                f"noodle validate {workflow.name}": ["validate", str(workflow)],
                "noodle nodes": ["nodes"]}
    python = [sys.executable, "-c", "pass"]
    print(_line("python -c pass (floor)", measure(python, repeats)))
    for label, args in commands.items():
        samples = measure([str(NOODLE), *args], repeats)
        print(_line(label, samples, imports_torch(args)))
        if args[0] == "validate":
            secs, mib = _median(samples, "seconds"), _median(samples, "peak_mib")
            print(f"    target <= 0.5 s and <= 80 MB: {secs:.3f} s "
                  f"({'met' if secs <= 0.5 else 'NOT met'}), {mib * 1.048576:.1f} MB "
                  f"({'met' if mib * 1.048576 <= 80 else 'NOT met'})")


def end_to_end(workflow: Path, repeats: int, threads: int) -> None:
    job = diffusers_job(json.loads(workflow.read_text()))
    print(f"\nnoodle run {workflow.name} vs a diffusers script, fresh process each, median of "
          f"{repeats}: {job['width']}x{job['height']}, {job['steps']} steps, "
          f"guidance {job['guidance']}, seed {job['seed']}, {threads} thread(s)")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    ours: list[Sample] = []
    theirs: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="noodle-cli-bench-") as tmp:
        out = Path(tmp)
        script = out / "diffusers_txt2img.py"
        script.write_text(DIFFUSERS_SCRIPT)
        job["out"] = str(out / "diffusers.png")
        noodle_cmd = [str(NOODLE), "run", str(workflow), "--output-dir", str(out / "noodle")]
        diffusers_cmd = [sys.executable, str(script), json.dumps(job)]
        for r in range(repeats):
            first, second = (noodle_cmd, diffusers_cmd) if r % 2 else (diffusers_cmd, noodle_cmd)
            for cmd in (first, second):
                (ours if cmd is noodle_cmd else theirs).extend(measure(cmd, 1, env))
        ours_png = sorted((out / "noodle").rglob("*.png"))[-1]
        diff = float(abs(read_pixels(ours_png) - read_pixels(Path(job["out"]))).max()) * 255
    print(_line("noodle run", ours))
    print(_line("diffusers script", theirs))
    ratio = _median(ours, "seconds") / _median(theirs, "seconds")
    print(f"  ratio noodle run / diffusers script: {ratio:.2f}x (target <= 1.1x: "
          f"{'met' if ratio <= 1.1 else 'NOT met'}); peak RSS ratio "
          f"{_median(ours, 'peak_mib') / _median(theirs, 'peak_mib'):.2f}x; "
          f"images differ by at most {diff:.0f}/255")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="processes per command")
    parser.add_argument("--run-repeats", type=int, default=3,
                        help="processes per implementation for the whole run")
    parser.add_argument("--workflow", type=Path, default=REPO / "workflows" / "txt2img.json")
    parser.add_argument("--skip-run", action="store_true", help="cold start figures only")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for the whole runs (1 keeps figures stable on a "
                             "shared machine, where spinning threads vary them tenfold)")
    args = parser.parse_args()
    workflow = args.workflow.resolve()
    cold_start(workflow, args.repeats)
    if not args.skip_run:
        end_to_end(workflow, args.run_repeats, args.threads)


if __name__ == "__main__":
    main()
