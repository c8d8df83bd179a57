"""Three LoRAs on an SD1.5-size UNet: our patching against diffusers' PEFT path, same files.

    python benchmarks/lora.py [--rank 16] [--threads 1] [--keep DIR]

An SD1.5-size UNet (random weights) and three random LoRA files in the diffusers/PEFT layout
(ranks `--rank`, 2 x rank and rank / 2; every attention projection, feed-forward layer and
proj_in/proj_out, as trainers target) are saved once. Each implementation then runs in a
fresh subprocess: load the UNet, then, timed,

* ours: read the three files and build the patches (`nodes.lora.lora_patches`), apply them
  (`patched`, strengths 1.0 / 0.6 / -0.4), one forward pass, remove them; with both merge
  strategies ("per_layer", the CPU default; "at_once", the accelerator default);
* diffusers: `load_lora_adapter` x 3, `set_adapters` with the same weights, `fuse_lora`,
  one forward pass, `unfuse_lora` and `unload_lora`.

"apply + remove" is everything except the forward pass; its peak memory is the rise of the
process's peak RSS over the loaded UNet, read from /proc (glibc's allocator cache off). The
forward pass's time and the two outputs' agreement are printed too, so that work moved from
applying into the steps (merging layer by layer) is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.models import SD15_UNET, _reset_peak, _rss_kib  # noqa: E402

STRENGTHS = (1.0, 0.6, -0.4)
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in",
           "proj_out")


def _save(root: Path, rank: int) -> list[Path]:
    """The UNet folder and three LoRA files (PEFT layout, `unet.` prefix)."""
    import diffusers
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    if not (root / "unet" / "config.json").exists():
        diffusers.UNet2DConditionModel(**SD15_UNET).save_pretrained(str(root / "unet"))
    unet = diffusers.UNet2DConditionModel.from_pretrained(str(root / "unet"))
    files = []
    for i, r in enumerate((rank, 2 * rank, max(1, rank // 2))):
        path = root / f"lora_{i}.safetensors"
        files.append(path)
        if path.exists():
            continue
        gen = torch.Generator().manual_seed(i)
        state = {}
        for name, module in unet.named_modules():
            if not name.endswith(TARGETS) or "attentions" not in name:
                continue
            weight = module.weight
            tail = tuple(weight.shape[2:])
            state[f"unet.{name}.lora_A.weight"] = 0.02 * torch.randn(
                r, weight.shape[1], *tail, generator=gen)
            state[f"unet.{name}.lora_B.weight"] = 0.02 * torch.randn(
                weight.shape[0], r, *((1, 1) if tail else ()), generator=gen)
        save_file(state, str(path))
    return files


def _inputs() -> tuple[Any, ...]:
    import torch

    gen = torch.Generator().manual_seed(1)
    return (torch.randn(1, 4, 32, 32, generator=gen), torch.tensor([500]),
            torch.randn(1, 77, 768, generator=gen))


def worker(impl: str, root: Path) -> dict[str, Any]:
    """Time and measure one implementation (see the module docstring)."""
    import torch

    files = sorted(root.glob("lora_*.safetensors"))
    x, t, ctx = _inputs()
    times: dict[str, float] = {}
    torch.set_grad_enabled(False)
    if impl.startswith("ours"):
        from nodes.diffusion.checkpoints import load_model_folder
        from nodes.diffusion.lora.patching import patched
        from nodes.diffusion.unet import UNet2DConditionModel
        from nodes.lora import lora_patches, read_lora

        unet = load_model_folder(root / "unet", UNet2DConditionModel, torch.float32, "cpu")
        strategy = impl.split(":")[1]
        rss, peak_ok = _rss_kib("VmRSS"), _reset_peak()
        t0 = time.perf_counter()
        patches = [lora_patches(read_lora(f), {"unet": unet}, {"unet": s}, f.name)["unet"]
                   for f, s in zip(files, STRENGTHS, strict=True)]
        block = patched(unet, patches, strategy)
        block.__enter__()
        times["apply"] = time.perf_counter() - t0
        apply_peak = _rss_kib("VmHWM")
        t0 = time.perf_counter()
        out = unet(x, t, ctx)
        times["forward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        block.__exit__(None, None, None)
        times["remove"] = time.perf_counter() - t0
    else:
        import diffusers

        unet = diffusers.UNet2DConditionModel.from_pretrained(str(root / "unet")).eval()
        rss, peak_ok = _rss_kib("VmRSS"), _reset_peak()
        names = [f"l{i}" for i in range(len(files))]
        t0 = time.perf_counter()
        for name, f in zip(names, files, strict=True):
            unet.load_lora_adapter(str(f), prefix="unet", adapter_name=name)
        unet.set_adapters(names, weights=list(STRENGTHS))
        unet.fuse_lora(adapter_names=names)
        times["apply"] = time.perf_counter() - t0
        apply_peak = _rss_kib("VmHWM")
        t0 = time.perf_counter()
        out = unet(x, t, ctx).sample
        times["forward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        unet.unfuse_lora()
        unet.unload_lora()
        times["remove"] = time.perf_counter() - t0
    return {"times": times, "peak_mib": (apply_peak - rss) / 1024 if peak_ok else float("nan"),
            "out": out.flatten()[:4096].tolist()}


def _spawn(impl: str, root: Path, threads: int) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run([sys.executable, __file__, "--worker", impl, str(root)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="folder for the UNet and LoRAs (reused)")
    args = parser.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="noodle-lora-")
    root = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    root.mkdir(parents=True, exist_ok=True)
    files = _save(root, args.rank)
    lora_mib = sum(f.stat().st_size for f in files) / 2**20
    impls = ["diffusers", "ours:per_layer", "ours:at_once"]
    runs = {impl: _spawn(impl, root, args.threads) for impl in impls}
    ref = runs["diffusers"]
    print(f"\nThree LoRAs ({lora_mib:.1f} MiB of files) on an SD1.5-size UNet, CPU fp32, "
          f"{args.threads} thread(s)")
    for impl in impls:
        r = runs[impl]
        worst = max(abs(a - b) for a, b in zip(r["out"], ref["out"], strict=True))
        tr, rr = r["times"], ref["times"]
        apply_remove = tr["apply"] + tr["remove"]
        ref_ar = rr["apply"] + rr["remove"]
        print(f"  {impl:15s} apply+remove {apply_remove:7.3f} s ({apply_remove / ref_ar:5.2f}x)"
              f"   peak {r['peak_mib']:8.1f} MiB ({r['peak_mib'] / ref['peak_mib']:5.2f}x)"
              f"   forward {tr['forward']:6.2f} s ({tr['forward'] / rr['forward']:4.2f}x)"
              f"   max |out - diffusers| {worst:.1e}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], Path(sys.argv[3]))))
    else:
        main()
