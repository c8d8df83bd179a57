"""Our models against diffusers': time, peak memory and load time, same weights, same run.

    python benchmarks/models.py [--repeats 3] [--rounds 2] [--threads 1] [--keep DIR]
                                [--only unet|vae|sdxl] [--latent 32]

An SD1.5-size UNet (random weights, sample_size=64, cross_attention_dim=768) runs on the CPU
in fp32 at batch 2 on 32x32 latents; the SD VAE decodes one 32x32 latent; the SDXL base UNet
(full size, 2.6 B parameters, saved in fp16 to halve the disk it takes, run in fp32) runs at
batch 2 on 32x32 latents with pooled text and micro-conditioning; and the saved folders are
loaded by both implementations. Every measurement runs in a fresh subprocess
so one implementation's allocator state cannot flatter the other. Peak memory is the rise
of the process's peak RSS during a forward pass (after a warm-up pass has touched the
weights), read from /proc on Linux with glibc's allocator cache disabled for that run.
Times are medians over ``--rounds`` processes x ``--repeats`` passes; CPU time is reported
beside wall time because other work on a shared machine inflates wall time.
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
from pathlib import Path
from typing import Any

SD15_UNET: dict[str, Any] = {"sample_size": 64, "cross_attention_dim": 768}
# SDXL base 1.0's UNet config.
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128, "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SD_VAE: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "sample_size": 512,
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(impl: str, task: str, folder: str, repeats: int, latent: int = 32) -> dict[str, Any]:
    """Load one model, run it, report load time, forward times, peak memory, a checksum.

    Imports happen before the load clock starts: only the loading itself is compared.
    """
    import torch

    if impl == "ours":
        from nodes.diffusion.checkpoints import load_model_folder
        from nodes.diffusion.unet import UNet2DConditionModel
        from nodes.diffusion.vae import AutoencoderKL

        ours_cls = AutoencoderKL if task == "vae" else UNet2DConditionModel
        t0 = time.perf_counter()
        model = load_model_folder(Path(folder), ours_cls, torch.float32, "cpu")
    else:
        import diffusers

        ref_cls = diffusers.AutoencoderKL if task == "vae" else diffusers.UNet2DConditionModel
        t0 = time.perf_counter()
        model = ref_cls.from_pretrained(folder, torch_dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(1)
    if task in ("unet", "sdxl"):
        x = torch.randn(2, 4, latent, latent, generator=gen)
        ctx = torch.randn(2, 77, 768 if task == "unet" else 2048, generator=gen)
        t = torch.tensor([500, 500])
        added = None
        if task == "sdxl":
            added = {"text_embeds": torch.randn(2, 1280, generator=gen),
                     "time_ids": torch.tensor([[256.0, 256, 0, 0, 256, 256]] * 2)}

        def run() -> torch.Tensor:
            out = model(x, t, ctx, added_cond_kwargs=added)
            return out if impl == "ours" else out.sample
    else:
        z = torch.randn(1, 4, latent, latent, generator=gen)

        def run() -> torch.Tensor:
            out = model.decode(z)
            return out if impl == "ours" else out.sample

    with torch.inference_mode():
        t0 = time.perf_counter()
        out = run()  # warm-up; also faults in memory-mapped weights
        first_s = time.perf_counter() - t0
        del out
        rss_before = _rss_kib("VmRSS")
        peak_ok = _reset_peak()
        walls, cpus = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            out = run()
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        peak = _rss_kib("VmHWM")
    return {
        "load_s": load_s, "first_forward_s": first_s, "walls": walls, "cpus": cpus,
        "peak_mib": (peak - rss_before) / 1024 if peak_ok else float("nan"),
        "checksum": float(out.double().abs().sum()),
    }


def _spawn(impl: str, task: str, folder: Path, repeats: int, threads: int, latent: int,
           memory: bool = False) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if memory:
        # Every large block is mapped and unmapped on its own, so peak RSS is the peak of
        # live tensors rather than of what the allocator happened to keep cached.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    cmd = [sys.executable, __file__, "--worker", impl, task, str(folder), str(repeats),
           str(latent)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl}/{task} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stat(runs: list[dict[str, Any]], key: str, agg: Any) -> float:
    """Aggregate one figure over every pass of every process."""
    values = [v for run in runs for v in (run[key] if isinstance(run[key], list) else [run[key]])]
    return float(agg(values))


def _save_models(root: Path) -> None:
    import diffusers
    import torch

    torch.manual_seed(0)
    if not (root / "unet" / "config.json").exists():
        diffusers.UNet2DConditionModel(**SD15_UNET).save_pretrained(str(root / "unet"))
    if not (root / "vae" / "config.json").exists():
        diffusers.AutoencoderKL(**SD_VAE).save_pretrained(str(root / "vae"))


def _save_sdxl(root: Path) -> None:
    import diffusers
    import torch

    if not (root / "sdxl" / "config.json").exists():
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel(**SDXL_UNET).half()
        unet.save_pretrained(str(root / "sdxl"))
        del unet


def _warm_page_cache(folder: Path) -> None:
    """Read the weight files once so neither loader pays for the cold disk alone."""
    for path in folder.glob("*.safetensors"):
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per implementation")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1 keeps figures stable on a shared machine)")
    parser.add_argument("--keep", type=Path, help="folder for the saved models (reused)")
    parser.add_argument("--only", choices=["unet", "vae", "sdxl"], help="run one model only")
    parser.add_argument("--latent", type=int, default=32,
                        help="latent side (32: 256 px images; 64: 512 px; 128: SDXL's 1024)")
    args = parser.parse_args()
    tmp = None
    root = args.keep
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="noodle-bench-")
        root = Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    print(f"saving random-weight models to {root} ...", flush=True)
    _save_models(root)
    tasks = [args.only] if args.only else ["unet", "vae", "sdxl"]
    if "sdxl" in tasks and not (root / "sdxl" / "config.json").exists():
        # In a subprocess: building 2.6 B random parameters leaves gigabytes in this
        # process's allocator that would sit beside every measurement.
        subprocess.run([sys.executable, __file__, "--save-sdxl", str(root)], check=True)
    for task in tasks:
        folder = root / task
        _warm_page_cache(folder)
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "diffusers": []}
        for r in range(args.rounds):
            # Alternate who goes first so drifting background load hits both alike.
            order = ("diffusers", "ours") if r % 2 == 0 else ("ours", "diffusers")
            for impl in order:
                runs[impl].append(_spawn(impl, task, folder, args.repeats, args.threads,
                                         args.latent))
        mem = {impl: _spawn(impl, task, folder, 1, args.threads, args.latent, memory=True)
               for impl in ("diffusers", "ours")}
        size = f"{args.latent}x{args.latent}"
        name = {"unet": f"UNet (SD1.5 size, batch 2, {size} latents)",
                "vae": f"VAE decode (SD VAE, 1 x {size} latent)",
                "sdxl": f"UNet (SDXL base size, batch 2, {size} latents)"}[task]
        ref_sum = runs["diffusers"][0]["checksum"]
        same = abs(runs["ours"][0]["checksum"] - ref_sum) <= 1e-4 * abs(ref_sum)
        print(f"\n{name}, CPU fp32, {args.threads} thread(s), outputs equal: {same}")

        rows = [("forward wall, median", "walls", statistics.median),
                ("forward wall, min", "walls", min),
                ("forward CPU time, median", "cpus", statistics.median),
                ("load (median)", "load_s", statistics.median),
                ("warm-up forward", "first_forward_s", statistics.median)]
        for label, key, agg in rows:
            a_, b_ = _stat(runs["ours"], key, agg), _stat(runs["diffusers"], key, agg)
            print(f"  {label:26s} ours {a_:8.3f} s    diffusers {b_:8.3f} s    "
                  f"ratio {a_ / b_:.2f}x")
        a_, b_ = mem["ours"]["peak_mib"], mem["diffusers"]["peak_mib"]
        print(f"  {'forward peak memory':26s} ours {a_:8.1f} MiB  diffusers {b_:8.1f} MiB  "
              f"ratio {a_ / b_:.2f}x")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--save-sdxl":
        _save_sdxl(Path(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, impl_, task_, folder_, repeats_, latent_ = sys.argv
        print(json.dumps(worker(impl_, task_, folder_, int(repeats_), int(latent_))))
    else:
        main()
