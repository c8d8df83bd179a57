"""GPU figures in one short run: UNet it/s eager and compiled, VAE decode, SDXL, peak memory.

    .venv/bin/python benchmarks/gpu.py [--out gpu-results.json] [--compile-mode MODE]
        [--iters 20] [--warmup 3] [--no-compile] [--no-sdxl] [--sdxl-compile]
        [--budget-s 210]
    .venv/bin/python benchmarks/gpu.py --device cpu --tiny     # smoke test, under 2 min

Random weights (nothing is downloaded), fp16, made once by diffusers and loaded into ours
with `load_state_dict`, so both implementations run the same weights. One "it" is one CFG
step: a UNet forward at batch 2. Measured, in this order (each configuration's peak memory
is `torch.cuda.max_memory_allocated` over the calls after the first: weights count,
whatever building or compiling them took does not):

1. SD1.5-size UNet at 512x512 (64x64 latents): ours eager, diffusers eager;
2. SD VAE decode of one 64x64 latent (a 512x512 image), ms: ours, diffusers;
3. SDXL-size UNet at 1024x1024 (128x128 latents, pooled text and micro-conditioning):
   ours eager, diffusers eager (`--sdxl-compile` adds compiled runs);
4. SD1.5-size UNet compiled: ours through the product's `CompileModel` node
   (`compile_ours`), diffusers with `torch.compile(mode=--compile-mode)`; the first call's
   time (compilation included) is recorded apart from the timed iterations.

Targets: ours eager and compiled it/s >= diffusers' (ratio >= 1.0x), peak memory <= 1.0x.
`--compile-mode` defaults to "default" so the whole run fits in about 4 minutes on an H100;
"max-autotune-no-cudagraphs" tunes kernels for several more minutes. A section that would
start after `--budget-s` is skipped (and listed as skipped). The JSON (`--out`) is written
after every section, so a run cut short still leaves its figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.models import SD_VAE, SDXL_UNET  # noqa: E402
from tests.support.model_configs import (  # noqa: E402
    SDXL_UNET as TINY_SDXL_UNET,
)
from tests.support.model_configs import (  # noqa: E402
    UNET_COND_CONFIGS,
    VAE_CONFIGS,
)
from tests.support.sd15_random import SD15_UNET  # noqa: E402

Forward = Callable[[], Any]


def compile_ours(module: Any, mode: str, backend: str = "inductor") -> Any:
    """Our UNet compiled the way the product does it: the CompileModel node, then what a
    sampler calls (`UNet.prepared()`: the compiled wrapper); plain `torch.compile` where
    the node library has no CompileModel (swap here, nowhere else)."""
    try:
        from nodes.compile import compile_model
    except ImportError:
        import torch

        return torch.compile(module, mode=mode, backend=backend)
    from nodes.types import UNet

    return compile_model(UNet(module), mode=mode, backend=backend).prepared()


def compile_diffusers(module: Any, mode: str, backend: str = "inductor") -> Any:
    import torch

    return torch.compile(module, mode=None if mode == "default" else mode, backend=backend)


class Bench:
    """Timing on one device: synchronised, warmed up, peak memory per configuration."""

    def __init__(self, device: str, iters: int, warmup: int, backend: str) -> None:
        import torch

        self.torch, self.device, self.backend = torch, torch.device(device), backend
        self.iters, self.warmup = iters, warmup
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None

    def time(self, forward: Forward) -> dict[str, float]:
        """First call (compilation, if any), then `warmup` untimed and `iters` timed."""
        with self.torch.inference_mode():
            t0 = time.perf_counter()
            forward()
            self.sync()
            first = time.perf_counter() - t0
            self.reset_peak()  # compilation's own buffers do not count
            for _ in range(self.warmup):
                forward()
            self.sync()
            t0 = time.perf_counter()
            for _ in range(self.iters):
                forward()
            self.sync()
            per = (time.perf_counter() - t0) / self.iters
        return {"first_call_s": first, "per_call_ms": per * 1000, "it_per_s": 1 / per}


def unet_inputs(config: dict[str, Any], latent: int, bench: Bench, dtype: Any
                ) -> tuple[Any, Any, Any, dict[str, Any] | None]:
    """Batch 2 (CFG): latents, timesteps, text context, SDXL's added conditioning."""
    torch = bench.torch
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, latent, latent, generator=gen)
    ctx = torch.randn(2, 77, config["cross_attention_dim"], generator=gen)
    added = None
    if config.get("addition_embed_type") == "text_time":
        pooled = (config["projection_class_embeddings_input_dim"]
                  - 6 * config["addition_time_embed_dim"])
        side = float(latent * 8)
        added = {"text_embeds": torch.randn(2, pooled, generator=gen).to(bench.device, dtype),
                 "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * 2
                                          ).to(bench.device, dtype)}
    t = torch.tensor([500, 500], device=bench.device)
    return x.to(bench.device, dtype), t, ctx.to(bench.device, dtype), added


def make_models(kind: str, config: dict[str, Any], bench: Bench, dtype: Any
                ) -> tuple[Any, dict[str, Any]]:
    """diffusers' model with fresh random weights (on the device) and its state dict on
    the CPU, which ours loads later: one copy of the weights on the device at a time."""
    import diffusers

    torch = bench.torch
    torch.manual_seed(0)
    cls = diffusers.UNet2DConditionModel if kind == "unet" else diffusers.AutoencoderKL
    with bench.device:
        theirs = cls(**config).to(dtype).eval()
    state = {k: v.to("cpu", copy=True) for k, v in theirs.state_dict().items()}
    return theirs, state


def ours_from(kind: str, theirs_config: dict[str, Any], state: dict[str, Any], bench: Bench,
              dtype: Any) -> Any:
    from nodes.diffusion.unet import UNet2DConditionModel
    from nodes.diffusion.vae import AutoencoderKL

    cls = UNet2DConditionModel if kind == "unet" else AutoencoderKL
    with bench.torch.device("meta"):
        ours = cls(theirs_config)
    ours.load_state_dict(state, assign=True, strict=True)
    return ours.to(bench.device, dtype).eval()


def _free(bench: Bench) -> None:
    import gc

    gc.collect()
    if bench.cuda:
        bench.torch.cuda.empty_cache()


def _timed(bench: Bench, forward: Forward) -> dict[str, Any]:
    """Timings and the peak after the first call: the weights on the device count,
    whatever building or compiling them took does not."""
    result: dict[str, Any] = bench.time(forward)
    result["peak_mib"] = bench.peak_mib()
    return result


def _time_unet(bench: Bench, model: Any, inputs: tuple[Any, ...], compile_with: Any,
               mode: str | None, diffusers_output: bool) -> dict[str, Any]:
    """Time one UNet, compiled first when `mode` is set; the wrapper dies on return."""
    x, t, ctx, added = inputs
    module = compile_with(model, mode, bench.backend) if mode else model

    def forward() -> Any:
        out = module(x, t, ctx, added_cond_kwargs=added)
        return out.sample if diffusers_output else out

    return _timed(bench, forward)


def bench_unet(name: str, config: dict[str, Any], latent: int, bench: Bench, dtype: Any,
               compile_mode: str | None) -> dict[str, Any]:
    """Diffusers then ours, eager or compiled, on one UNet size."""
    results: dict[str, Any] = {}
    theirs, state = make_models("unet", config, bench, dtype)
    theirs_config = {k: v for k, v in theirs.config.items() if not k.startswith("_")}
    inputs = unet_inputs(theirs_config, latent, bench, dtype)
    results["diffusers"] = _time_unet(bench, theirs, inputs, compile_diffusers, compile_mode,
                                      True)
    del theirs
    _free(bench)
    ours = ours_from("unet", theirs_config, state, bench, dtype)
    del state
    results["ours"] = _time_unet(bench, ours, inputs, compile_ours, compile_mode, False)
    del ours
    _free(bench)
    _ratios(results)
    _print(name, results, "it/s", "it_per_s")
    return results


def _time_decode(bench: Bench, model: Any, z: Any, diffusers_output: bool) -> dict[str, Any]:
    def forward() -> Any:
        out = model.decode(z)
        return out.sample if diffusers_output else out

    return _timed(bench, forward)


def bench_vae(name: str, config: dict[str, Any], latent: int, bench: Bench, dtype: Any
              ) -> dict[str, Any]:
    results: dict[str, Any] = {}
    z = bench.torch.randn(1, config.get("latent_channels", 4), latent, latent,
                          generator=bench.torch.Generator().manual_seed(2)).to(bench.device, dtype)
    theirs, state = make_models("vae", config, bench, dtype)
    theirs_config = {k: v for k, v in theirs.config.items() if not k.startswith("_")}
    results["diffusers"] = _time_decode(bench, theirs, z, True)
    del theirs
    _free(bench)
    ours = ours_from("vae", theirs_config, state, bench, dtype)
    del state
    results["ours"] = _time_decode(bench, ours, z, False)
    del ours
    _free(bench)
    _ratios(results)
    _print(name, results, "ms", "per_call_ms")
    return results


def _ratios(results: dict[str, Any]) -> None:
    ours, theirs = results["ours"], results["diffusers"]
    results["ratio_it_per_s"] = ours["it_per_s"] / theirs["it_per_s"]
    if ours["peak_mib"] is not None:
        results["ratio_peak_mib"] = ours["peak_mib"] / theirs["peak_mib"]


def _print(name: str, results: dict[str, Any], unit: str, key: str) -> None:
    cells = []
    for impl in ("ours", "diffusers"):
        r = results[impl]
        peak = "" if r["peak_mib"] is None else f", peak {r['peak_mib']:.0f} MiB"
        cells.append(f"{impl} {r[key]:8.2f} {unit}{peak} (first call {r['first_call_s']:.1f} s)")
    mem = results.get("ratio_peak_mib")
    mem_note = "" if mem is None else f", memory {mem:.2f}x"
    print(f"{name}\n  " + "\n  ".join(cells)
          + f"\n  speed ours/diffusers {results['ratio_it_per_s']:.2f}x{mem_note}", flush=True)


def plan(args: argparse.Namespace) -> list[tuple[str, Callable[[Bench, Any], dict[str, Any]]]]:
    """The sections in order, each a name and a function of (bench, dtype)."""
    unet_cfg = dict(UNET_COND_CONFIGS["sd1_like"]) if args.tiny else dict(SD15_UNET)
    vae_cfg = dict(VAE_CONFIGS["sd_like"]) if args.tiny else dict(SD_VAE)
    sdxl_cfg = dict(TINY_SDXL_UNET) if args.tiny else dict(SDXL_UNET)
    latent, sdxl_latent = (8, 16) if args.tiny else (64, 128)
    size, sdxl_size = latent * 8, sdxl_latent * 8
    mode = args.compile_mode
    sd, xl = ("Tiny SD1-like", "Tiny SDXL-like") if args.tiny else ("SD1.5-size", "SDXL-size")
    sections: list[tuple[str, Callable[[Bench, Any], dict[str, Any]]]] = [
        (f"sd15_unet_eager ({size}x{size}, batch 2)",
         lambda b, d: bench_unet(f"{sd} UNet eager, {size}x{size}, batch 2", unet_cfg,
                                 latent, b, d, None)),
        (f"vae_decode ({size}x{size})",
         lambda b, d: bench_vae(f"VAE decode, {size}x{size}", vae_cfg, latent, b, d)),
    ]
    if not args.no_sdxl:
        sections.append((f"sdxl_unet_eager ({sdxl_size}x{sdxl_size}, batch 2)", lambda b, d:
                         bench_unet(f"{xl} UNet eager, {sdxl_size}x{sdxl_size}, batch 2",
                                    sdxl_cfg, sdxl_latent, b, d, None)))
    if not args.no_compile:
        sections.append((f"sd15_unet_compiled ({mode})", lambda b, d: bench_unet(
            f"{sd} UNet compiled ({mode}), {size}x{size}, batch 2", unet_cfg, latent, b,
            d, mode)))
        if args.sdxl_compile and not args.no_sdxl:
            sections.append((f"sdxl_unet_compiled ({mode})", lambda b, d: bench_unet(
                f"{xl} UNet compiled ({mode}), {sdxl_size}x{sdxl_size}, batch 2",
                sdxl_cfg, sdxl_latent, b, d, mode)))
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (a CPU smoke test)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                        help="default: float16 on CUDA, float32 elsewhere")
    parser.add_argument("--iters", type=int, help="timed iterations (default 20; 2 with --tiny)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--compile-backend",
                        help="torch.compile backend (default inductor; eager with --tiny on "
                             "the CPU, where inductor's C++ builds take minutes)")
    parser.add_argument("--threads", type=int,
                        help="intra-op threads (default: torch's; 1 on the CPU)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-sdxl", action="store_true")
    parser.add_argument("--sdxl-compile", action="store_true", help="also compile SDXL")
    parser.add_argument("--budget-s", type=float, default=210.0,
                        help="skip sections that would start after this many seconds")
    parser.add_argument("--out", type=Path, default=Path("gpu-results.json"))
    args = parser.parse_args()
    started = time.perf_counter()

    import diffusers
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    on_cpu = torch.device(args.device).type == "cpu"
    backend = args.compile_backend or ("eager" if args.tiny and on_cpu else "inductor")
    if args.threads or on_cpu:
        torch.set_num_threads(args.threads or 1)
    bench = Bench(args.device, args.iters or (2 if args.tiny else 20),
                  min(args.warmup, 1) if args.tiny else args.warmup, backend)
    dtype_name = args.dtype or ("float16" if bench.cuda else "float32")
    dtype = getattr(torch, dtype_name)
    device_name = (torch.cuda.get_device_name(bench.device) if bench.cuda else "cpu")
    report: dict[str, Any] = {
        "device": device_name, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "dtype": dtype_name, "tiny": args.tiny, "compile_mode": args.compile_mode,
        "compile_backend": backend, "threads": torch.get_num_threads(),
        "iters": bench.iters, "warmup": bench.warmup, "sections": {}, "skipped": []}
    print(f"{device_name}, torch {torch.__version__}, {dtype_name}, compile backend {backend}",
          flush=True)
    for name, section in plan(args):
        if time.perf_counter() - started > args.budget_s:
            report["skipped"].append(name)
            print(f"skipped (past --budget-s): {name}", flush=True)
            continue
        report["sections"][name] = section(bench, dtype)
        report["elapsed_s"] = time.perf_counter() - started
        args.out.write_text(json.dumps(report, indent=1))
    report["elapsed_s"] = time.perf_counter() - started
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out} ({report['elapsed_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
