"""Loader nodes: a whole pipeline, a replacement VAE, a scheduler; scheduler swapping.

A `source` is a diffusers folder, a single-file checkpoint, a name under the models folder
(`NOODLE_MODELS_DIR`, default `./models`) or a hub `org/name`. Each loader fingerprints the
files the source resolves to (path, size, mtime), so editing weights on disk invalidates the
cached models although the workflow did not change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from graph_runtime.nodes import Choice, node
from nodes.diffusion import checkpoints
from nodes.diffusion.schedulers import SCHEDULERS
from nodes.types import VAE, Scheduler, TextEncoder, Tokenizer, UNet

DEFAULT_MODEL = "noodle-tiny"
DTYPES = ["auto", "fp32", "fp16", "bf16"]
DEVICES = ["auto", "cpu", "cuda", "mps"]
# The schedulers the seeds list as compatible with Stable Diffusion 1.5, in their order.
SCHEDULER_TYPES = [
    "LMSDiscreteScheduler", "UniPCMultistepScheduler", "KDPM2DiscreteScheduler",
    "DEISMultistepScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DDPMScheduler", "DPMSolverSinglestepScheduler", "KDPM2AncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "PNDMScheduler", "EulerAncestralDiscreteScheduler",
    "DDIMScheduler",
]
COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")


# The embedded default models live in the repository's models/ folder; names there resolve
# even when the working directory (and so ./models) is elsewhere.
BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "models"


def models_dir() -> Path:
    return Path(os.environ.get("NOODLE_MODELS_DIR") or "models")


def resolve(source: str) -> Path:
    """The file or folder a source names: the models folder, a path, the embedded models,
    then the hub cache (`org/name`)."""
    primary = models_dir()
    literal = Path(source).expanduser()
    if (not literal.is_absolute() and not (primary / source).exists()
            and not literal.exists() and (BUNDLED_MODELS / source).exists()):
        return BUNDLED_MODELS / source
    return Path(checkpoints.resolve_source(source, primary))


def model_choices() -> list[str]:
    """Names the source widget offers; re-read whenever the node schema is exported."""
    names: list[str] = []
    for folder in (models_dir(), BUNDLED_MODELS):
        try:
            names += [n for n in checkpoints.list_models(folder) if n not in names]
        except OSError:
            continue
    return names or [DEFAULT_MODEL]


def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def source_fingerprint(inputs: Mapping[str, Any]) -> str | None:
    """Path, size and mtime of every file the source resolves to."""
    source = inputs.get("source")
    if not isinstance(source, str):
        return None
    root = resolve(source)
    parts = [str(root.resolve())]
    for f in _files_of(root):
        st = f.stat()
        parts.append(f"{f.relative_to(root) if f != root else f.name}:{st.st_size}:"
                     f"{st.st_mtime_ns}")
    return "|".join(parts)


def absent_components(inputs: Mapping[str, Any]) -> dict[str, str]:
    """Outputs a source does not provide, with the reason, read from `model_index.json`
    without loading anything — so validation can reject a link from them (wiring the VAE
    of an unconditional DDPM repository) before a run starts."""
    source = inputs.get("source")
    if not isinstance(source, str):
        return {}
    try:
        root = resolve(source)
    except Exception:  # noqa: BLE001 - an unresolvable source is reported when it runs
        return {}
    index = root / "model_index.json"
    if not index.is_file():
        return {}
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return {}
    kind = data.get("_class_name", "this pipeline")
    missing = {}
    for name in COMPONENTS:
        entry = data.get(name)
        if not entry or (isinstance(entry, list) and entry[0] is None):
            missing[name] = f"{source!r} ({kind}) has no {name}"
    return missing


class Pipeline(NamedTuple):
    tokenizer: Tokenizer
    text_encoder: TextEncoder
    unet: UNet
    vae: VAE
    scheduler: Scheduler


@node("LoadPipeline", category="loaders", fingerprint=source_fingerprint,
      display_name="Load Pipeline")
def load_pipeline(
    source: str = Choice(model_choices, default=DEFAULT_MODEL, allow_other=True,
                         tooltip="a diffusers folder, a .safetensors checkpoint, a name "
                                 "under models/, or org/name from the hub cache"),
    dtype: str = Choice(DTYPES, default="auto",
                        tooltip="auto: fp16 on a GPU, fp32 on the CPU"),
    device: str = Choice(DEVICES, default="auto"),
) -> Pipeline:
    """Load every component of a diffusion pipeline from one source.

    An unconditional (DDPM) repository gives only `unet` and `scheduler`; linking one of
    its absent outputs is reported by validation.
    """
    comp = checkpoints.load_pipeline(resolve(source), dtype=dtype, device=device,
                                     models_dir=models_dir())
    src = source
    cfg = comp.scheduler_config
    return Pipeline(
        tokenizer=Tokenizer(comp.tokenizer, src) if comp.tokenizer is not None else None,
        text_encoder=(TextEncoder(comp.text_encoder, src)
                      if comp.text_encoder is not None else None),
        unet=UNet(comp.unet, src) if comp.unet is not None else None,
        vae=VAE(comp.vae, src) if comp.vae is not None else None,
        scheduler=(Scheduler(cfg["_class_name"], dict(cfg), src) if cfg is not None
                   else None),
    )


load_pipeline.__node__.extra["absent_outputs"] = absent_components


@node("LoadVAE", category="loaders", fingerprint=source_fingerprint, output="vae",
      display_name="Load VAE")
def load_vae(
    source: str = Choice(model_choices, default=DEFAULT_MODEL, allow_other=True,
                         tooltip="a VAE folder (config.json + weights), a pipeline "
                                 "folder (its vae/ is used), or org/name"),
    dtype: str = Choice(DTYPES, default="auto"),
    device: str = Choice(DEVICES, default="auto"),
) -> VAE:
    """Load a VAE on its own, to swap a better one into a pipeline (e.g. sd-vae-ft-mse)."""
    model = checkpoints.load_vae(resolve(source), dtype=dtype, device=device,
                                 models_dir=models_dir())
    return VAE(model, source)


@node("LoadScheduler", category="loaders", fingerprint=source_fingerprint,
      output="scheduler", display_name="Load Scheduler")
def load_scheduler(
    source: str = Choice(model_choices, default=DEFAULT_MODEL, allow_other=True),
) -> Scheduler:
    """The scheduler described by a folder's `scheduler/scheduler_config.json`."""
    cfg = checkpoints.load_scheduler_config(resolve(source), models_dir=models_dir())
    return Scheduler(cfg["_class_name"], dict(cfg), source)


@node("SwapScheduler", category="sampling", output="scheduler", display_name="Swap Scheduler")
def swap_scheduler(
    scheduler: Scheduler,
    type: str = Choice(SCHEDULER_TYPES, default="EulerDiscreteScheduler"),
) -> Scheduler:
    """Another scheduler with the same training configuration (diffusers' `from_config`):
    betas and train steps are kept, the new class's own options take their defaults."""
    if type not in SCHEDULERS:
        raise ValueError(f"scheduler {type!r} is not available here; "
                         f"available: {', '.join(sorted(SCHEDULERS))}")
    swapped = SCHEDULERS[type].from_config(scheduler.config)
    return Scheduler(type, dict(swapped.config), scheduler.source)
