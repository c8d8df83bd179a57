"""Train a canny ControlNet for the shipped tiny model.

    python tools/train_controlnet.py                      # models/controlnet/noodle-tiny-canny
    python tools/train_controlnet.py --minutes 2          # cap the wall time
    python tools/train_controlnet.py --steps 20 --out /tmp/cn --no-eval   # a smoke run

The base model (`models/noodle-tiny`) stays frozen. The ControlNet starts as a copy of its
UNet's encoder (zero-initialised output convs, so training starts from the base model, as
diffusers' `ControlNetModel.from_unet` does) with a conditioning embedding that brings the
64x64 edge map to the 16x16 latents (two stride-2 steps). It learns the base model's own
objective (epsilon prediction, min-SNR weighting, 10 % empty captions) with the Canny edges
(kornia, as the CannyEdges node computes them) of each tools/shapes.py render as control.
The weights are saved with diffusers' keys in one `.safetensors` file (LoadControlNet reads
the config off the shapes), with a training log beside it; the evaluation measures how
well generated shapes cover the shape the edge map outlines, with and without control.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import shapes, tiny_model  # noqa: E402
from tools.train_tiny import CFG_DROPOUT, MIN_SNR_GAMMA, Log, encode_dataset, lr_at, to_tensor  # noqa: E402

BASE = tiny_model.REPO_ROOT / "models" / "noodle-tiny"
OUT = tiny_model.REPO_ROOT / "models" / "controlnet"
NAME = "noodle-tiny-canny"
EMBEDDING = (16, 32, 64)  # 64 px edge map -> 16x16 latents
LOW, HIGH = 0.1, 0.2  # Canny thresholds of the training data (and the shipped workflow)
EVAL_STEPS, EVAL_GUIDANCE, EVAL_IMAGES = 25, 7.5, 16


@dataclass
class Data:
    mean: torch.Tensor
    std: torch.Tensor
    edges: torch.Tensor  # [N, 3, 64, 64] in 0..1
    context: torch.Tensor  # encoded captions, the empty one last
    caption_idx: torch.Tensor
    scale: float
    images: np.ndarray
    captions: list[str]


@torch.no_grad()
def prepare(components: object, n: int, seed: int, gen: torch.Generator, log: Log) -> Data:
    """Render scenes (seed + 2: not the base model's own images), their edges, latents and
    caption embeddings (the text encoder is frozen, so each caption is encoded once)."""
    from nodes.controlnet import canny_edges

    raw, captions, _ = shapes.make_dataset(n, seed=seed + 2)
    c = components
    mean, std, _ = encode_dataset(c.vae, to_tensor(raw), gen)  # type: ignore[attr-defined]
    edges = torch.cat([canny_edges(torch.from_numpy(chunk).float() / 255.0, LOW, HIGH)
                       for chunk in np.array_split(raw, max(1, n // 256))])
    unique = sorted(set(captions)) + [""]
    index = {cap: i for i, cap in enumerate(unique)}
    ids = c.tokenizer(unique, padding="max_length",  # type: ignore[attr-defined]
                      max_length=tiny_model.MAX_TOKENS, truncation=True,
                      return_tensors="pt").input_ids
    context = c.text_encoder(ids)[0]  # type: ignore[attr-defined]
    scale = float(c.vae.config["scaling_factor"])  # type: ignore[attr-defined]
    log(f"dataset: {n} scenes, {len(unique) - 1} captions, edge pixels "
        f"{float((edges[..., 0] > 0.5).float().mean()) * 100:.1f} %")
    return Data(mean, std, edges.permute(0, 3, 1, 2).contiguous(), context,
                torch.tensor([index[cap] for cap in captions]), scale, raw, captions)


def train(unet: torch.nn.Module, controlnet: torch.nn.Module, data: Data, steps: int,
          batch: int, lr: float, deadline: float, gen: torch.Generator, log: Log) -> int:
    """The base model's objective with the edge map as control; only the ControlNet moves.
    Progress is the larger of steps done and time used (as train_tiny.py), so a run stopped
    by --minutes still anneals its learning rate."""
    ac = tiny_model.alphas_cumprod(tiny_model.SD_SCHEDULER_CONFIG)
    snr = ac / (1 - ac)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    empty = len(data.context) - 1
    params = [p for p in controlnet.parameters() if p.requires_grad]
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
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        context = data.context[cap]
        down, mid = controlnet(zt, t, context, data.edges[idx])
        pred = unet(zt, t, context, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid)
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
def sample(components: object, controlnet: torch.nn.Module | None, context: torch.Tensor,
           uncond: torch.Tensor, edges: torch.Tensor, seed: int) -> np.ndarray:
    """Deterministic DDIM with guidance, written here so the measurement does not depend
    on the nodes under test: uint8 images (n, 64, 64, 3)."""
    c = components
    n = len(context)
    cond = torch.cat([uncond.expand(n, -1, -1), context])
    hint = torch.cat([edges, edges])
    ac = tiny_model.alphas_cumprod(tiny_model.SD_SCHEDULER_CONFIG).double()
    z = torch.randn((n, 4, 16, 16), generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    times = list(range(0, len(ac), len(ac) // EVAL_STEPS))[::-1]
    for i, t in enumerate(times):
        x = torch.cat([z, z]).float()
        extra = {}
        if controlnet is not None:
            down, mid = controlnet(x, torch.tensor(t), cond, hint)
            extra = {"down_block_additional_residuals": down,
                     "mid_block_additional_residual": mid}
        eps = c.unet(x, torch.tensor(t), cond, **extra).double()  # type: ignore[attr-defined]
        un, text = eps.chunk(2)
        eps = un + EVAL_GUIDANCE * (text - un)
        a, a_prev = ac[t], (ac[times[i + 1]] if i + 1 < len(times) else ac.new_tensor(1.0))
        x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
        z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    vae = c.vae  # type: ignore[attr-defined]
    image = vae.decode((z / float(vae.config["scaling_factor"])).float())
    image = getattr(image, "sample", image).clamp(-1, 1)
    return ((image.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap of the foreground shapes of two images (intersection over union)."""
    ma, mb = shapes.foreground_mask(a)[0], shapes.foreground_mask(b)[0]
    union = float((ma | mb).sum())
    return float((ma & mb).sum()) / union if union else 0.0


def evaluate(components: object, controlnet: torch.nn.Module, data: Data,
             log: Log) -> dict[str, float]:
    """Held-out scenes: the generated shape's overlap with the scene the edges came from,
    with the ControlNet and without (the base model places shapes where it likes)."""
    raw, captions, _ = shapes.make_dataset(EVAL_IMAGES, seed=991)
    from nodes.controlnet import canny_edges

    edges = canny_edges(torch.from_numpy(raw).float() / 255.0, LOW, HIGH).permute(0, 3, 1, 2)
    ids = components.tokenizer(captions + [""], padding="max_length",  # type: ignore[attr-defined]
                               max_length=tiny_model.MAX_TOKENS, truncation=True,
                               return_tensors="pt").input_ids
    emb = components.text_encoder(ids)[0]  # type: ignore[attr-defined]
    results = {}
    for label, net in (("controlnet", controlnet), ("base", None)):
        images = sample(components, net, emb[:-1], emb[-1:], edges, seed=5)
        results[f"iou_{label}"] = float(np.mean([iou(g, r) for g, r in zip(images, raw,
                                                                             strict=True)]))
        hits = [shapes.classify(g).shape == s.shape
                for g, s in zip(images, shapes.make_dataset(EVAL_IMAGES, seed=991)[2],
                                strict=True)]
        results[f"shape_{label}"] = float(np.mean(hits))
    log("evaluation: " + ", ".join(f"{k} {v:.3f}" for k, v in results.items()))
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=BASE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-eval", action="store_true", help="skip the measurement")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from nodes.diffusion.checkpoints import load_components
    from nodes.diffusion.controlnet import controlnet_from_unet

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    log = Log()
    log(f"{NAME}: steps {args.steps}, batch {args.batch}, lr {args.lr}, images "
        f"{args.images}, canny {LOW}/{HIGH}, seed {args.seed}, threads {args.threads}")
    components = load_components(args.base, device="cpu", dtype="float32")
    for module in (components.unet, components.text_encoder, components.vae):
        module.requires_grad_(False).eval()
    controlnet = controlnet_from_unet(components.unet,  # type: ignore[arg-type]
                                      conditioning_embedding_out_channels=EMBEDDING)
    controlnet.train().requires_grad_(True)
    log(f"controlnet: {controlnet.num_parameters():,} parameters")
    data = prepare(components, args.images, args.seed, gen, log)
    done = train(components.unet, controlnet, data, args.steps, args.batch, args.lr,
                 log.start + (args.minutes or 1e9) * 60, gen, log)
    controlnet.eval()
    results = {} if args.no_eval else evaluate(components, controlnet, data, log)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{NAME}.safetensors"
    metadata = {"description": "noodle-tiny canny ControlNet (white edges on black, "
                               f"CannyEdges {LOW}/{HIGH})",
                "steps": str(done), "results": json.dumps(results)}
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(path),
              metadata=metadata)
    log(f"saved {path} ({path.stat().st_size / 2**10:.0f} KiB), {done} steps")
    (args.out / f"training_log_{NAME}.txt").write_text("\n".join(log.lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
