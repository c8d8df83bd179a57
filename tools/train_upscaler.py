"""Train the shipped tiny upscale model: a small RRDBNet (ESRGAN) that doubles the size of
the tiny model's pictures.

    python tools/train_upscaler.py                 # models/upscale_models/noodle-tiny-esrgan-2x
    python tools/train_upscaler.py --minutes 2     # cap the wall time
    python tools/train_upscaler.py --steps 20 --out /tmp/up   # a smoke run

High-resolution targets are tools/shapes.py scenes rendered at 64x64 (the tiny model's
world: flat shapes with anti-aliased edges); inputs are the same scenes shrunk to 32x32 with
Pillow's bicubic filter. The network (our `nodes.upscalers.rrdbnet`, BasicSR key layout)
learns an L1 loss with Adam; the log compares it on held-out scenes with plain bicubic
enlargement, and goes into the file's metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodes.upscalers.layouts import config_of, from_basicsr  # noqa: E402
from nodes.upscalers.rrdbnet import RRDBConfig, RRDBNet  # noqa: E402
from tools import shapes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAME = "noodle-tiny-esrgan-2x.safetensors"
CONFIG = RRDBConfig(features=16, growth=8, blocks=2, upsamples=1)
N_TRAIN, N_TEST, BATCH, CROP = 512, 64, 16, 16
LR, STEPS = 2e-3, 2000


def pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) resolution images [n, 3, H, W] in 0..1 for `n` seeded scenes."""
    raw, _, _ = shapes.make_dataset(n, seed=seed)
    small = shapes.IMAGE_SIZE // CONFIG.scale
    low = np.stack([np.asarray(Image.fromarray(img).resize((small, small),
                                                           Image.Resampling.BICUBIC))
                    for img in raw])

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0

    return tensor(low), tensor(raw)


def crops(low: torch.Tensor, high: torch.Tensor, gen: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of aligned crops (CROP low-resolution pixels square)."""
    s = CONFIG.scale
    idx = torch.randint(0, len(low), (BATCH,), generator=gen)
    room = low.shape[-1] - CROP
    ys = torch.randint(0, room + 1, (BATCH,), generator=gen)
    xs = torch.randint(0, room + 1, (BATCH,), generator=gen)
    lo = torch.stack([low[i, :, y: y + CROP, x: x + CROP]
                      for i, y, x in zip(idx, ys, xs, strict=True)])
    hi = torch.stack([high[i, :, y * s: (y + CROP) * s, x * s: (x + CROP) * s]
                      for i, y, x in zip(idx, ys, xs, strict=True)])
    return lo, hi


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a.clamp(0, 1), b)))


def train(steps: int, minutes: float | None, seed: int) -> tuple[RRDBNet, dict[str, str]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    low, high = pairs(N_TRAIN, seed)
    test_low, test_high = pairs(N_TEST, seed + 10_000)
    net = RRDBNet(CONFIG)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    start, done = time.monotonic(), 0
    for step in range(steps):
        if minutes is not None and time.monotonic() - start > minutes * 60:
            break
        lo, hi = crops(low, high, gen)
        loss = F.l1_loss(net(lo), hi)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        done = step + 1
        if step % 100 == 0:
            print(f"step {step:5d}  l1 {loss.item():.4f}  {time.monotonic() - start:.0f}s")
    net.eval()
    with torch.no_grad():
        ours = psnr(net(test_low), test_high)
    bicubic = psnr(F.interpolate(test_low, scale_factor=CONFIG.scale, mode="bicubic"),
                   test_high)
    log = {"steps": str(done), "seconds": f"{time.monotonic() - start:.0f}",
           "config": json.dumps(CONFIG.__dict__), "seed": str(seed),
           "test_psnr": f"{ours:.2f}", "bicubic_psnr": f"{bicubic:.2f}"}
    print(f"held-out PSNR: ours {ours:.2f} dB, bicubic {bicubic:.2f} dB")
    return net, log


def basicsr_state(net: RRDBNet) -> dict[str, torch.Tensor]:
    """Our weights under BasicSR's names (`conv_up.0` -> `conv_up1`), as released
    Real-ESRGAN files name them."""
    out = {}
    for key, value in net.state_dict().items():
        if key.startswith("conv_up."):
            _, n, kind = key.split(".")
            key = f"conv_up{int(n) + 1}.{kind}"
        out[key] = value.detach().clone().contiguous()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "upscale_models")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--minutes", type=float, default=None, help="wall-time cap")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net, log = train(args.steps, args.minutes, args.seed)
    state = basicsr_state(net)
    assert config_of(from_basicsr(state)) == CONFIG  # the loaders will read it back
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / NAME
    save_file(state, str(path), metadata={"trained_by": "tools/train_upscaler.py", **log})
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
