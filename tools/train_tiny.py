"""Train the shipped tiny models from scratch on procedurally generated shapes.

    python tools/train_tiny.py                   # everything, as shipped (~40 min, 2 CPU cores)
    python tools/train_tiny.py --only sd         # retrain UNet + text encoder on the saved VAE
    python tools/train_tiny.py --scale 0.02      # a quick smoke run (2 % of the steps)
    python tools/train_tiny.py --minutes 30      # cap wall time; phases stop early if needed

Phases: (1) the VAE on 64x64 renders; (2) the UNet and CLIP text encoder together on the VAE's
latents, with 10 % empty captions so classifier-free guidance works; (3) an unconditional
pixel-space UNet2DModel on the same scenes at 32x32. Everything is seeded: the same command
on the same thread count gives the same weights. The models are our own plain-torch modules
and transformers' CLIPTextModel, saved in the diffusers folder layout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import shapes, tiny_model  # noqa: E402

DEFAULT_STEPS = {"vae": 2000, "sd": 6000, "ddpm": 1500, "decoder": 1500}
BATCH = {"vae": 8, "sd": 32, "ddpm": 32, "decoder": 8}
LR = {"vae": 2e-3, "sd": 1e-3, "ddpm": 1e-3, "decoder": 1e-3}
# Share of a --minutes cap each phase may use (encoding the dataset comes out of "sd").
TIME_SHARE = {"vae": 0.18, "sd": 0.72, "ddpm": 0.10}
N_IMAGES = 8000
CFG_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
KL_WEIGHT = 1e-4


class Log:
    """Prints progress and keeps every line for the training log written next to the model."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.start = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.start:7.1f}s] {msg}"
        print(line, flush=True)
        self.lines.append(line)


class EMA:
    """Exponential moving average of a module's weights: the saved weights are the average,
    which is markedly better than the last iterate after a short, high-learning-rate run."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        # Rebuilt from the config rather than deep-copied: model configs are frozen mappings.
        self.shadow = type(module)(module.config).eval().requires_grad_(False)
        self.shadow.load_state_dict(module.state_dict())
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow.parameters(), module.parameters(), strict=True):
            s.lerp_(p.detach(), 1 - d)


def lr_at(progress: float, base: float, warmup: float = 0.04) -> float:
    """Linear warm-up, then cosine decay to a tenth of the base rate; `progress` is 0..1."""
    if progress < warmup:
        return base * max(progress, 1e-3) / warmup
    p = min(1.0, (progress - warmup) / (1 - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def run_loop(name: str, steps: int, deadline: float, log: Log, params: list[dict],
             step_fn: Callable[[int], torch.Tensor], on_step: Callable[[], None]) -> int:
    """The shared optimisation loop: AdamW, schedule, clipping, logging, time cap.

    Progress is the larger of steps done and time used, so a run stopped by `--minutes`
    still anneals its learning rate to the end (such a run is not bit-reproducible; a run
    that finishes its steps is)."""
    opt = torch.optim.AdamW(params, lr=LR[name], betas=(0.9, 0.99))
    all_params = [p for group in params for p in group["params"]]
    start = time.time()
    running = 0.0
    for step in range(steps):
        progress = max(step / steps, (time.time() - start) / max(1e-9, deadline - start))
        if progress >= 1.0:
            log(f"{name}: time cap reached after {step} of {steps} steps")
            return step
        for group in opt.param_groups:
            group["lr"] = lr_at(progress, LR[name])
        loss = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(all_params, 1.0)
        opt.step()
        on_step()
        running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            lr = opt.param_groups[0]["lr"]
            log(f"{name} step {step + 1}/{steps} loss {running:.5f} lr {lr:.2e}")
    return steps


def train_vae(images: torch.Tensor, steps: int, deadline: float, log: Log,
              gen: torch.Generator) -> torch.nn.Module:
    """Reconstruction (MSE + L1) with a light KL term; the decoder sees posterior samples,
    so it tolerates the imprecise latents the diffusion model will produce."""
    vae = tiny_model.build_vae().train()
    ema = EMA(vae, 0.995)

    def step_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(images), (BATCH["vae"],), generator=gen)
        x = images[idx]
        posterior = vae.encode(x)
        recon = vae.decode(posterior.sample(generator=gen))
        kl = 0.5 * (posterior.mean.pow(2) + posterior.logvar.exp() - 1 - posterior.logvar)
        return F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + KL_WEIGHT * kl.mean()

    done = run_loop("vae", steps, deadline, log, [{"params": list(vae.parameters())}],
                    step_fn, lambda: ema.update(vae))
    log(f"vae: {done} steps")
    return ema.shadow


def train_decoder(vae: torch.nn.Module, images: torch.Tensor, steps: int, deadline: float,
                  log: Log, gen: torch.Generator) -> torch.nn.Module:
    """Refine the decoder alone on a trained VAE. The encoder is frozen, so latents (and a
    UNet trained on them) stay valid while colours and edges get sharper."""
    vae.train()
    frozen = list(vae.encoder.parameters()) + list(vae.quant_conv.parameters())
    for p in frozen:
        p.requires_grad_(False)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    ema = EMA(vae, 0.995)

    def step_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(images), (BATCH["decoder"],), generator=gen)
        x = images[idx]
        with torch.no_grad():
            z = vae.encode(x).sample(generator=gen)
        recon = vae.decode(z)
        return F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)

    done = run_loop("decoder", steps, deadline, log, [{"params": trainable}], step_fn,
                    lambda: ema.update(vae))
    log(f"decoder: {done} steps")
    return ema.shadow


@torch.no_grad()
def encode_dataset(vae: torch.nn.Module, images: torch.Tensor,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Posterior mean and std of every training image, and the scaling factor that gives the
    scaled latents unit variance (SD's 0.18215 was found the same way)."""
    means, stds = [], []
    for chunk in images.split(256):
        posterior = vae.encode(chunk)
        means.append(posterior.mean)
        stds.append((0.5 * posterior.logvar).exp())
    mean, std = torch.cat(means), torch.cat(stds)
    sample = mean + std * torch.randn(mean.shape, generator=gen)
    return mean, std, float(1.0 / sample.std())


@torch.no_grad()
def reconstruction_error(vae: torch.nn.Module, images: torch.Tensor) -> float:
    """Mean absolute error in 0..255 units, on posterior means (what img2img sees)."""
    recon = vae.decode(vae.encode(images).mean).clamp(-1, 1)
    return float((recon - images).abs().mean() * 127.5)


def train_sd(mean: torch.Tensor, std: torch.Tensor, scale: float, captions: list[str],
             steps: int, deadline: float, log: Log, gen: torch.Generator,
             resume_from: Path | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """UNet + text encoder on epsilon prediction, SD's scaled_linear schedule, min-SNR
    weighting (faster convergence at the same quality), 10 % empty captions for guidance."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_model.CLIP_VOCAB_DIR))
    unique = sorted(set(captions)) + [""]
    index = {c: i for i, c in enumerate(unique)}
    ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    caption_idx = torch.tensor([index[c] for c in captions])
    empty = len(unique) - 1
    log(f"sd: {len(unique) - 1} distinct captions, scaling factor {scale:.5f}")

    unet = tiny_model.build_unet().train()
    text_encoder = tiny_model.build_text_encoder().train()
    if resume_from is not None:
        # Continue from saved weights: longer training without starting over.
        unet.load_state_dict(load_file(str(resume_from / "unet"
                                           / "diffusion_pytorch_model.safetensors")))
        text_encoder.load_state_dict(load_file(str(resume_from / "text_encoder"
                                                   / "model.safetensors")), strict=False)
        log(f"sd: resuming from {resume_from}")
    ema_unet, ema_text = EMA(unet, 0.999), EMA(text_encoder, 0.999)
    ac = tiny_model.alphas_cumprod(tiny_model.SD_SCHEDULER_CONFIG)
    snr = ac / (1 - ac)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr

    def step_fn(step: int) -> torch.Tensor:
        b = BATCH["sd"]
        idx = torch.randint(0, len(mean), (b,), generator=gen)
        cap = caption_idx[idx].clone()
        cap[torch.rand(b, generator=gen) < CFG_DROPOUT] = empty
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        t = torch.randint(0, len(ac), (b,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond = text_encoder(ids[cap])[0]
        pred = unet(zt, t, cond)
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        return (per_sample * weight[t]).mean()

    def on_step() -> None:
        ema_unet.update(unet)
        ema_text.update(text_encoder)

    params = [{"params": list(unet.parameters()), "weight_decay": 0.01},
              # Untouched token rows must keep their initial values: no decay on the encoder.
              {"params": list(text_encoder.parameters()), "weight_decay": 0.0}]
    done = run_loop("sd", steps, deadline, log, params, step_fn, on_step)
    log(f"sd: {done} steps")
    return ema_text.shadow, ema_unet.shadow


def train_ddpm(images: torch.Tensor, steps: int, deadline: float, log: Log,
               gen: torch.Generator) -> torch.nn.Module:
    """Unconditional pixel-space UNet2DModel at 32x32 with the DDPM paper's linear schedule."""
    small = F.avg_pool2d(images, 2)
    unet = tiny_model.build_ddpm_unet().train()
    ema = EMA(unet, 0.999)
    ac = tiny_model.alphas_cumprod(tiny_model.DDPM_SCHEDULER_CONFIG)

    def step_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(small), (BATCH["ddpm"],), generator=gen)
        x0 = small[idx]
        t = torch.randint(0, len(ac), (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        return F.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t), noise)

    done = run_loop("ddpm", steps, deadline, log, [{"params": list(unet.parameters())}],
                    step_fn, lambda: ema.update(unet))
    log(f"ddpm: {done} steps")
    return ema.shadow


def phase_generator(seed: int, phase: str) -> torch.Generator:
    """Each phase draws from its own seeded stream (and seeds weight init the same way), so
    retraining one phase alone reproduces what the full run would have made."""
    offset = list(DEFAULT_STEPS).index(phase)
    torch.manual_seed(seed * 1000 + offset)
    return torch.Generator().manual_seed(seed * 1000 + offset)


def load_saved_vae(folder: Path) -> tuple[torch.nn.Module, float]:
    """The VAE of a previous run (for `--only sd`), with its scaling factor."""
    vae = tiny_model.build_vae()
    vae.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")))
    config = json.loads((folder / "config.json").read_text())
    return vae.eval(), float(config["scaling_factor"])


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors")) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=tiny_model.REPO_ROOT / "models")
    parser.add_argument("--only", choices=["all", "vae+sd", "sd", "ddpm", "decoder"],
                        default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply all step counts")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap")
    parser.add_argument("--resume", action="store_true",
                        help="with --only sd: continue from the saved UNet and text encoder")
    parser.add_argument("--lr-scale", type=float, default=1.0,
                        help="multiply the learning rates (e.g. 0.4 when resuming)")
    for phase in DEFAULT_STEPS:
        parser.add_argument(f"--{phase}-steps", type=int, default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    for key in LR:
        LR[key] *= args.lr_scale
    steps = {k: max(1, round((getattr(args, f"{k}_steps") or v) * args.scale))
             for k, v in DEFAULT_STEPS.items()}
    budget = (args.minutes or 1e9) * 60
    log = Log()
    log(f"seed {args.seed}, threads {args.threads}, steps {steps}, batch {BATCH}, lr {LR}")
    sd_dir, ddpm_dir = args.out / "noodle-tiny", args.out / "noodle-tiny-ddpm"

    raw, captions, _ = shapes.make_dataset(N_IMAGES, seed=args.seed)
    images = to_tensor(raw)
    log(f"dataset: {len(images)} scenes, e.g. {captions[:3]}")

    if args.only in ("all", "vae+sd", "sd"):
        if args.only == "sd":
            vae, _ = load_saved_vae(sd_dir / "vae")
            log("vae: reusing the saved VAE")
        else:
            vae = train_vae(images, steps["vae"], log.start + budget * TIME_SHARE["vae"],
                            log, phase_generator(args.seed, "vae"))
        log(f"vae: reconstruction error {reconstruction_error(vae, images[:256]):.2f}/255")
        gen = phase_generator(args.seed, "sd")
        mean, std, scale = encode_dataset(vae, images, gen)
        text_encoder, unet = train_sd(mean, std, scale, captions, steps["sd"],
                                      log.start + budget * (1 - TIME_SHARE["ddpm"]), log, gen,
                                      resume_from=sd_dir if args.resume else None)
        tiny_model.save_sd_pipeline(sd_dir, text_encoder, unet, vae, scale)
        log(f"saved {sd_dir} ({folder_mb(sd_dir):.1f} MB of weights)")
        mode = "a" if args.resume else "w"
        with (sd_dir / "training_log.txt").open(mode) as f:
            f.write("\n".join(log.lines) + "\n")
    if args.only == "decoder":
        vae, scale = load_saved_vae(sd_dir / "vae")
        vae = train_decoder(vae, images, steps["decoder"], log.start + budget, log,
                            phase_generator(args.seed, "decoder"))
        log(f"vae: reconstruction error {reconstruction_error(vae, images[:256]):.2f}/255")
        tiny_model.save_diffusers_model(vae, sd_dir / "vae", "AutoencoderKL",
                                        config_overrides={"scaling_factor": scale})
        log(f"saved {sd_dir / 'vae'}")
        with (sd_dir / "training_log.txt").open("a") as f:
            f.write("\n".join(log.lines) + "\n")
    if args.only in ("all", "ddpm"):
        unet2d = train_ddpm(images, steps["ddpm"], log.start + budget, log,
                            phase_generator(args.seed, "ddpm"))
        tiny_model.save_ddpm_pipeline(ddpm_dir, unet2d)
        log(f"saved {ddpm_dir} ({folder_mb(ddpm_dir):.1f} MB of weights)")
        (ddpm_dir / "training_log.txt").write_text("\n".join(log.lines) + "\n")
    log(f"done in {(time.time() - log.start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
