"""ComfyUI parity of the whole default workflow, for every sampler x scheduler pair.

Runs ComfyUI's default text-to-image prompt (CheckpointLoaderSimple -> CLIPTextEncode x2 ->
EmptyLatentImage -> KSampler -> VAEDecode) with ComfyUI's own nodes (in a subprocess, the
oracle checkout named by NOODLE_COMFYUI_ORACLE or ../shared/oracles/ComfyUI) and with ours,
on a random-weight checkpoint with SD1.5's full layout, and prints for each pair the largest
difference between the two images (in 1/255 steps; the test suite requires <= 2 for six
common pairs) and our run time as a ratio of ComfyUI's, measured in the same run.

    .venv/bin/python benchmarks/comfyui_parity.py [--samplers euler,dpmpp_2m]
        [--schedulers karras] [--steps 4] [--size 64] [--models DIR]

The full table (19 samplers x 9 schedulers) takes about half an hour on two CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nodes.diffusion.ksampling import SAMPLER_NAMES, SCHEDULER_NAMES  # noqa: E402
from tests.support.comfy_oracle import (  # noqa: E402
    NoodleRunner,
    default_prompt,
    oracle_available,
    oracle_path,
    pack_registered,
    run_comfy_prompts,
)
from tests.support.sd15_random import build_sd15_checkpoint, checkpoint_name  # noqa: E402

# Shared with the test suite's copy, so neither builds the 2 GB file twice.
DEFAULT_MODELS = REPO_ROOT / ".pytest_cache" / "d" / "comfyui-sd15-models"


def _names(text: str | None, every: tuple[str, ...]) -> list[str]:
    if not text:
        return list(every)
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in every]
    if unknown:
        raise SystemExit(f"unknown: {', '.join(unknown)}; choose from {', '.join(every)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", help="comma-separated (default: all)")
    parser.add_argument("--schedulers", help="comma-separated (default: all)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    args = parser.parse_args()
    args.models = args.models.resolve()  # ComfyUI runs in another working directory
    if not oracle_available():
        raise SystemExit(f"no ComfyUI checkout at {oracle_path()} (set NOODLE_COMFYUI_ORACLE)")
    if not pack_registered():
        raise SystemExit("the ComfyUI node pack does not provide the default workflow's nodes")

    samplers = _names(args.samplers, SAMPLER_NAMES)
    schedulers = _names(args.schedulers, SCHEDULER_NAMES)
    name = checkpoint_name()
    build_sd15_checkpoint(args.models / "checkpoints" / name)
    prompts = {
        f"{sampler} {scheduler}": default_prompt(
            name, sampler, scheduler, steps=args.steps, size=args.size, seed=args.seed
        )
        for sampler in samplers
        for scheduler in schedulers
    }
    print(f"{len(prompts)} pairs, {args.steps} steps, {args.size}x{args.size}, seed {args.seed}")

    with tempfile.TemporaryDirectory() as work:
        theirs, their_times = run_comfy_prompts(
            prompts, args.models / "checkpoints", Path(work) / "comfy", timeout=24 * 3600
        )
        runner = NoodleRunner(args.models, Path(work) / "noodle")
        first = next(iter(prompts))
        runner.image(prompts[first])  # load the checkpoint outside the timings, as above
        print(f"{'sampler':<24}{'scheduler':<18}{'max diff /255':>14}{'time ratio':>12}")
        worst = 0.0
        for pair, prompt in prompts.items():
            started = time.perf_counter()
            ours = runner.image(prompt)
            seconds = time.perf_counter() - started
            diff = float(np.abs(ours - theirs[pair]).max()) * 255
            worst = max(worst, diff)
            sampler, scheduler = pair.split(" ")
            ratio = seconds / their_times[pair] if pair != first else float("nan")
            print(f"{sampler:<24}{scheduler:<18}{diff:>14.3f}{ratio:>12.2f}")
    print(f"worst difference: {worst:.3f}/255 (ComfyUI start-up {their_times['startup']:.1f} s)")


if __name__ == "__main__":
    main()
