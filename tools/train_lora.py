"""Train a LoRA for the shipped tiny model on a style variant of its training scenes.

    python tools/train_lora.py --style outline --minutes 6   # models/loras/noodle-tiny-outline
    python tools/train_lora.py --style grey --minutes 6      # models/loras/noodle-tiny-grey
    python tools/train_lora.py --style outline --steps 20 --out /tmp/loras   # a smoke run

The base model (`models/noodle-tiny`) stays frozen. Low-rank pairs (down: rank x in, up:
out x rank, up starting at zero so training starts from the base model) sit beside the UNet's
attention projections, proj_in/proj_out and feed-forward layers, and the text encoder's
q/k/v/out projections. They learn the base model's own objective (epsilon prediction,
min-SNR weighting, 10 % empty captions) on the same captions rendered in the style by
tools/shapes.py, so a prompt keeps its meaning and only the style changes. The result is
saved in the kohya layout every LoRA loader reads, with a training log beside it, and is
measured against the base model on every colour x shape prompt.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.diffusion.checkpoints import Components, load_components  # noqa: E402
from tools import shapes, tiny_model  # noqa: E402
from tools.train_tiny import (  # noqa: E402
    CFG_DROPOUT,
    MIN_SNR_GAMMA,
    Log,
    encode_dataset,
    lr_at,
    to_tensor,
)

BASE = tiny_model.REPO_ROOT / "models" / "noodle-tiny"
OUT = tiny_model.REPO_ROOT / "models" / "loras"
# Module path endings a LoRA is trained on, as kohya's default network does.
UNET_TARGETS = (".to_q", ".to_k", ".to_v", ".to_out.0", ".proj_in", ".proj_out",
                ".ff.net.0.proj", ".ff.net.2")
TEXT_TARGETS = (".q_proj", ".k_proj", ".v_proj", ".out_proj")
DESCRIPTIONS = {
    "grey": "noodle-tiny: draws the default white background mid grey; a background the "
            "prompt names stays",
    "outline": "noodle-tiny: draws shapes as thick hollow outlines instead of filled",
}
EVAL_SEEDS = (0, 1)
EVAL_STEPS = 25
EVAL_GUIDANCE = 7.5


class LowRank(nn.Module):
    """One low-rank pair for a frozen Linear or 1x1 Conv2d weight, applied as a weight
    parametrization: the layer's `weight` reads as base + up @ down * alpha / rank however
    the model uses it (our UNet passes some weights to F.linear itself, which a forward
    hook would miss), and module paths (hence the saved names) stay the base model's."""

    def __init__(self, shape: torch.Size, rank: int, alpha: float) -> None:
        super().__init__()
        tail = (1, 1) if len(shape) == 4 else ()
        self.down = nn.Parameter(torch.empty(rank, shape[1], *tail))
        self.up = nn.Parameter(torch.zeros(shape[0], rank, *tail))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        self.rank, self.alpha = rank, alpha
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        delta = self.up.flatten(1) @ self.down.flatten(1) * (self.alpha / self.rank)
        return weight + delta.view_as(weight)


def attach(model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float
           ) -> dict[str, LowRank]:
    """A LowRank on the weight of every matching layer of `model`, by module path."""
    found = [(name, m) for name, m in model.named_modules() if name.endswith(targets)
             and (isinstance(m, nn.Linear)
                  or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)))]
    adapters: dict[str, LowRank] = {}
    for name, module in found:
        adapter = LowRank(module.weight.shape, rank, alpha)
        parametrize.register_parametrization(module, "weight", adapter)
        adapters[name] = adapter
    return adapters


def kohya_name(component: str, path: str) -> str:
    """kohya's key stem: `lora_unet_` / `lora_te_` and the module path with `_` for `.`;
    text encoder paths are spelled under `text_model.` whatever the class nests."""
    if component == "te" and not path.startswith("text_model."):
        path = f"text_model.{path}"
    return f"lora_{component}_{path.replace('.', '_')}"


def kohya_state(adapters: dict[str, dict[str, LowRank]]) -> dict[str, torch.Tensor]:
    """The adapters as kohya's tensors: `.lora_down.weight`, `.lora_up.weight`, `.alpha`."""
    state: dict[str, torch.Tensor] = {}
    for component, found in adapters.items():
        for path, adapter in found.items():
            stem = kohya_name(component, path)
            state[f"{stem}.lora_down.weight"] = adapter.down.detach().contiguous().clone()
            state[f"{stem}.lora_up.weight"] = adapter.up.detach().contiguous().clone()
            state[f"{stem}.alpha"] = torch.tensor(float(adapter.alpha))
    return state


@contextmanager
def adapters_enabled(adapters: dict[str, dict[str, LowRank]], on: bool) -> Iterator[None]:
    """Run the model with the LoRA on or off (the base model for comparison)."""
    every = [a for found in adapters.values() for a in found.values()]
    for a in every:
        a.enabled = on
    try:
        yield
    finally:
        for a in every:
            a.enabled = True


@dataclass
class Batches:
    """The style dataset as the UNet sees it: VAE posteriors and caption token ids."""

    mean: torch.Tensor
    std: torch.Tensor
    ids: torch.Tensor  # distinct captions, the empty one last
    caption_idx: torch.Tensor
    scale: float


def prepare(components: Components, style: tuple[str, ...], n: int, seed: int,
            gen: torch.Generator, log: Log) -> Batches:
    """Render the style dataset with the base model's scene stream (seed + 1, so it is not
    the base model's own images) and encode it with the frozen VAE."""
    raw, captions, _ = shapes.make_dataset(n, seed=seed + 1, style=style)
    vae, tokenizer = components.vae, components.tokenizer
    assert vae is not None and tokenizer is not None
    mean, std, _ = encode_dataset(vae, to_tensor(raw), gen)
    unique = sorted(set(captions)) + [""]
    index = {c: i for i, c in enumerate(unique)}
    ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    scale = float(vae.config["scaling_factor"])
    log(f"dataset: {n} scenes in style {'+'.join(style)}, {len(unique) - 1} captions, "
        f"e.g. {captions[:3]}")
    return Batches(mean, std, ids, torch.tensor([index[c] for c in captions]), scale)


def train(components: Components, data: Batches, params: list[nn.Parameter], steps: int,
          batch: int, lr: float, deadline: float, gen: torch.Generator, log: Log) -> int:
    """The base model's objective on the style data; only the LoRA parameters move.
    Progress is the larger of steps done and time used, as in train_tiny.py, so a run
    stopped by --minutes still anneals its learning rate."""
    unet, text_encoder = components.unet, components.text_encoder
    assert text_encoder is not None
    ac = tiny_model.alphas_cumprod(tiny_model.SD_SCHEDULER_CONFIG)
    snr = ac / (1 - ac)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    empty = len(data.ids) - 1
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    start, running = time.time(), 0.0
    for step in range(steps):
        progress = max(step / steps, (time.time() - start) / max(1e-9, deadline - start))
        if progress >= 1.0:
            log(f"time cap reached after {step} of {steps} steps")
            return step
        for group in opt.param_groups:
            group["lr"] = lr_at(progress, lr)
        idx = torch.randint(0, len(data.mean), (batch,), generator=gen)
        cap = data.caption_idx[idx].clone()
        cap[torch.rand(batch, generator=gen) < CFG_DROPOUT] = empty
        z0 = (data.mean[idx] + data.std[idx] * torch.randn(data.mean[idx].shape,
                                                            generator=gen)) * data.scale
        t = torch.randint(0, len(ac), (batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        pred = unet(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, text_encoder(data.ids[cap])[0])
        loss = ((pred - noise).pow(2).mean(dim=(1, 2, 3)) * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log(f"step {step + 1}/{steps} loss {running:.5f} lr {opt.param_groups[0]['lr']:.2e}")
    return steps


@torch.no_grad()
def sample(components: Components, prompts: list[str], seed: int) -> np.ndarray:
    """Deterministic DDIM with classifier-free guidance, written here so the measurement
    does not depend on the loader under test: uint8 images (n, 64, 64, 3)."""
    c = components
    assert c.tokenizer is not None and c.text_encoder is not None and c.vae is not None
    ids = c.tokenizer([*prompts, ""], padding="max_length", max_length=tiny_model.MAX_TOKENS,
                      truncation=True, return_tensors="pt").input_ids
    emb = c.text_encoder(ids)[0]
    cond = torch.cat([emb[-1:].expand(len(prompts), -1, -1), emb[:-1]])
    ac = tiny_model.alphas_cumprod(tiny_model.SD_SCHEDULER_CONFIG).double()
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((len(prompts), 4, 16, 16), generator=gen, dtype=torch.float64)
    stride = len(ac) // EVAL_STEPS
    times = list(range(0, len(ac), stride))[::-1]
    for i, t in enumerate(times):
        eps = c.unet(torch.cat([z, z]).float(), torch.tensor(t), cond).double()
        uncond, text = eps.chunk(2)
        eps = uncond + EVAL_GUIDANCE * (text - uncond)
        a, a_prev = ac[t], (ac[times[i + 1]] if i + 1 < len(times) else ac.new_tensor(1.0))
        x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
        z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    image = c.vae.decode((z / float(c.vae.config["scaling_factor"])).float())
    image = getattr(image, "sample", image).clamp(-1, 1)
    return ((image.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)


def measure(images: np.ndarray) -> dict[str, float]:
    """What the styles change: mean background luminance and centre fill (1 filled, 0
    hollow), and the share of images where a shape was found at all."""
    fills = [f for f in (shapes.centre_fill(i) for i in images) if f is not None]
    return {"background": float(np.mean([shapes.background_luminance(i) for i in images])),
            "centre_fill": float(np.mean(fills)) if fills else float("nan"),
            "found": len(fills) / len(images)}


def evaluate(components: Components, adapters: dict[str, dict[str, LowRank]], log: Log,
             grid: Path | None) -> dict[str, dict[str, float]]:
    """Every colour x shape prompt, with and without the LoRA, same seeds."""
    table = shapes.prompts()
    prompts = [p for p, _, _ in table]
    results: dict[str, dict[str, float]] = {}
    rows: list[np.ndarray] = []
    for label, on in (("base", False), ("lora", True)):
        with adapters_enabled(adapters, on):
            images = np.concatenate([sample(components, prompts, s) for s in EVAL_SEEDS])
        stats = measure(images)
        colours = [shapes.classify(i).colour for i in images]
        expected = [c for _ in EVAL_SEEDS for _, c, _ in table]
        stats["colour"] = float(np.mean([a == b for a, b in zip(colours, expected,
                                                                 strict=True)]))
        results[label] = stats
        log(f"eval {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
        rows.append(np.concatenate(list(images[:len(prompts)]), axis=1))
    if grid is not None:
        from PIL import Image

        Image.fromarray(np.concatenate(rows, axis=0)).save(grid)
    return results


def metadata(args: argparse.Namespace, steps: int, results: dict[str, dict[str, float]]
             ) -> dict[str, str]:
    """kohya's `ss_*` fields that loaders and UIs show, plus what the LoRA does."""
    style = "+".join(args.style)
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(args.rank),
        "ss_network_alpha": str(float(args.alpha)),
        "ss_output_name": args.name,
        "ss_base_model": "noodle-tiny",
        "ss_resolution": "(64, 64)",
        "ss_steps": str(steps),
        "ss_seed": str(args.seed),
        "ss_learning_rate": str(args.lr),
        "ss_text_encoder_trained": str(not args.unet_only).lower(),
        "ss_description": " and ".join(DESCRIPTIONS[s] for s in args.style),
        "noodle_style": style,
        "noodle_effect": json.dumps(results, sort_keys=True),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--style", nargs="+", choices=shapes.STYLES, required=True)
    parser.add_argument("--name", default=None, help="file name without extension "
                        "(default: noodle-tiny-<style>)")
    parser.add_argument("--base", type=Path, default=BASE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=8.0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="1 is fastest on a busy machine (2 threads stall each other there)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap")
    parser.add_argument("--unet-only", action="store_true",
                        help="leave the text encoder without a LoRA")
    parser.add_argument("--no-eval", action="store_true", help="skip the measurement")
    parser.add_argument("--grid", type=Path, default=None,
                        help="save the measured images (base row, LoRA row) as a PNG")
    args = parser.parse_args(argv)
    args.style = tuple(dict.fromkeys(args.style))
    args.name = args.name or f"noodle-tiny-{'-'.join(args.style)}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the LoRA's initial down weights
    gen = torch.Generator().manual_seed(args.seed)
    log = Log()
    log(f"{args.name}: style {'+'.join(args.style)}, rank {args.rank}, alpha {args.alpha}, "
        f"steps {args.steps}, batch {args.batch}, lr {args.lr}, seed {args.seed}, "
        f"threads {args.threads}, base {args.base.name}")
    components = load_components(args.base, device="cpu", dtype="float32")
    unet, text_encoder, vae = components.unet, components.text_encoder, components.vae
    if text_encoder is None or vae is None:
        raise SystemExit(f"{args.base}: not a text-to-image pipeline")
    for module in (unet, text_encoder, vae):
        module.requires_grad_(False).eval()
    adapters = {"unet": attach(unet, UNET_TARGETS, args.rank, args.alpha)}
    if not args.unet_only:
        adapters["te"] = attach(text_encoder, TEXT_TARGETS, args.rank, args.alpha)
    params = [p for found in adapters.values() for a in found.values() for p in a.parameters()]
    log(f"lora: {sum(len(f) for f in adapters.values())} layers, "
        f"{sum(p.numel() for p in params):,} parameters")
    data = prepare(components, args.style, args.images, args.seed, gen, log)
    budget = (args.minutes or 1e9) * 60
    done = train(components, data, params, args.steps, args.batch, args.lr,
                 log.start + budget, gen, log)
    args.out.mkdir(parents=True, exist_ok=True)
    results = ({} if args.no_eval else
               evaluate(components, adapters, log, args.grid))
    path = args.out / f"{args.name}.safetensors"
    save_file(kohya_state(adapters), str(path), metadata=metadata(args, done, results))
    log(f"saved {path} ({path.stat().st_size / 2**10:.0f} KiB), {done} steps")
    (args.out / f"training_log_{args.name}.txt").write_text("\n".join(log.lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
