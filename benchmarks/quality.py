"""How good is the shipped tiny model? Every colour x shape prompt, several seeds, each output
graded by plain image analysis (tools/shapes.py), once per scheduler at its recommended
step count. Prints colour and shape accuracy per scheduler and writes a prompt grid.

    python benchmarks/quality.py                       # all schedulers, 4 seeds per prompt
    python benchmarks/quality.py --schedulers DPM++ --seeds 8
    python benchmarks/quality.py --grid docs/tiny_grid.png

Chance level is 1/5 for colour and 1/3 for shape. Target (DPM++ at 20 steps, guidance 7.5):
colour >= 90 %, shape >= 80 %. The sampling loop is the one every SD pipeline runs —
classifier-free guidance over [empty prompt, prompt], `scale_model_input`, `step` — over
our own UNet, VAE and schedulers, so a regression in any of them shows up here.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nodes.diffusion.checkpoints import load_components  # noqa: E402
from nodes.diffusion.schedulers import scheduler_from_config  # noqa: E402
from tools import shapes  # noqa: E402

# (label, scheduler class, recommended steps), as in the diffusers scheduler guide.
SCHEDULES: list[tuple[str, str, int]] = [
    ("PNDM", "PNDMScheduler", 50),
    ("DDIM", "DDIMScheduler", 50),
    ("Euler", "EulerDiscreteScheduler", 30),
    ("Euler Ancestral", "EulerAncestralDiscreteScheduler", 30),
    ("DPM++", "DPMSolverMultistepScheduler", 20),
    ("UniPC", "UniPCMultistepScheduler", 10),
]
TARGET_COLOUR = 0.90
TARGET_SHAPE = 0.80


@dataclass
class Score:
    """Accuracy of one scheduler over a prompt set."""

    label: str
    steps: int
    n: int
    colour: float
    shape: float
    both: float
    seconds: float


def load_tiny(source: str = "noodle-tiny", models_dir: Path | None = None) -> Any:
    """The shipped model on the CPU in fp32 (the configuration CI runs)."""
    return load_components(source, dtype="fp32", device="cpu",
                         models_dir=models_dir or REPO_ROOT / "models")


@torch.no_grad()
def encode_text(components: Any, prompts: list[str]) -> torch.Tensor:
    """CLIP hidden states for each prompt, padded to 77 tokens as SD does."""
    tok = components.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids
    return components.text_encoder(ids)[0]


@torch.no_grad()
def generate(components: Any, prompts: list[str], seeds: list[int], scheduler: str,
             steps: int, guidance: float = 7.5) -> list[Image.Image]:
    """One image per (prompt, seed) pair, batched; each image's initial noise comes from its
    own seeded generator, so any single image can be re-made alone."""
    unet, vae = components.unet, components.vae
    sched = scheduler_from_config(dict(components.scheduler_config), scheduler)
    sched.set_timesteps(steps)
    cond = encode_text(components, prompts)
    uncond = encode_text(components, [""]).expand_as(cond)
    context = torch.cat([uncond, cond])
    size = int(unet.config["sample_size"])
    latents = torch.cat([
        torch.randn((1, unet.in_channels, size, size), generator=torch.Generator().manual_seed(s))
        for s in seeds]) * sched.init_noise_sigma
    step_gen = torch.Generator().manual_seed(seeds[0])
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([latents, latents]), t)
        noise_uncond, noise_text = unet(x, t, context).chunk(2)
        noise = noise_uncond + guidance * (noise_text - noise_uncond)
        latents = sched.step(noise, t, latents, generator=step_gen).prev_sample
    pixels = vae.decode(latents / float(vae.config["scaling_factor"]))
    pixels = (pixels / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]


def evaluate(components: Any, scheduler: str, steps: int, seeds: list[int],
             guidance: float = 7.5, label: str | None = None,
             prompt_set: list[tuple[str, str, str]] | None = None) -> Score:
    """Generate every prompt x seed and grade it with the shape classifier."""
    prompt_set = prompt_set or shapes.prompts()
    jobs = [(p, c, s, seed) for p, c, s in prompt_set for seed in seeds]
    start = time.time()
    images = generate(components, [j[0] for j in jobs], [j[3] for j in jobs], scheduler,
                      steps, guidance)
    seconds = time.time() - start
    colour_ok = shape_ok = both_ok = 0
    for (_, colour, shape, _), image in zip(jobs, images, strict=True):
        got = shapes.classify(image)
        colour_ok += got.colour == colour
        shape_ok += got.shape == shape
        both_ok += got.colour == colour and got.shape == shape
    n = len(jobs)
    return Score(label or scheduler, steps, n, colour_ok / n, shape_ok / n, both_ok / n, seconds)


def make_grid(images: list[Image.Image], labels: list[str], cols: int,
              cell: int = 128) -> Image.Image:
    """Images upscaled to `cell` pixels (nearest, so pixels stay honest), labelled below."""
    rows = (len(images) + cols - 1) // cols
    label_h = 16
    grid = Image.new("RGB", (cols * cell, rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (i % cols) * cell, (i // cols) * (cell + label_h)
        grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        draw.text((x + 4, y + cell + 2), label, fill="black")
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Quality of the shipped tiny model.")
    parser.add_argument("--model", default="noodle-tiny")
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--schedulers", nargs="*", default=None,
                        help="labels to run, e.g. DPM++ UniPC (default: all)")
    parser.add_argument("--grid", type=Path, default=None,
                        help="also write a grid, one image per prompt (DPM++ 20 steps, seed 0)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    components = load_tiny(args.model, args.models_dir)
    seeds = list(range(args.seeds))
    wanted = set(args.schedulers) if args.schedulers else None
    print(f"{args.model}: {len(shapes.prompts())} prompts x {len(seeds)} seeds, "
          f"guidance {args.guidance}; chance: colour {1 / len(shapes.COLOURS):.0%}, "
          f"shape {1 / len(shapes.SHAPES):.0%}")
    print(f"{'scheduler':<16}{'steps':>6}{'colour':>9}{'shape':>8}{'both':>8}{'sec':>8}")
    scores = []
    for label, cls, steps in SCHEDULES:
        if wanted is not None and label not in wanted:
            continue
        s = evaluate(components, cls, steps, seeds, args.guidance, label)
        scores.append(s)
        print(f"{s.label:<16}{s.steps:>6}{s.colour:>9.1%}{s.shape:>8.1%}{s.both:>8.1%}"
              f"{s.seconds:>8.1f}", flush=True)
    for s in scores:
        if s.label == "DPM++":
            met = s.colour >= TARGET_COLOUR and s.shape >= TARGET_SHAPE
            print(f"target (DPM++ 20 steps: colour >= {TARGET_COLOUR:.0%}, shape >= "
                  f"{TARGET_SHAPE:.0%}): {'met' if met else 'NOT met'}")
    if args.grid is not None:
        prompt_set = shapes.prompts()
        images = generate(components, [p for p, _, _ in prompt_set], [0] * len(prompt_set),
                          "DPMSolverMultistepScheduler", 20, args.guidance)
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        make_grid(images, [p.removeprefix("a ") for p, _, _ in prompt_set],
                  cols=len(shapes.COLOURS)).save(args.grid)
        print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
