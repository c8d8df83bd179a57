"""Loader nodes: a whole pipeline, a replacement VAE, a scheduler; scheduler swapping.

A `source` is a diffusers folder, a single-file checkpoint, a name under the run's models
folder (`Folders.models`, default `./models`), a checkpoint name in ComfyUI's folders
(`models/checkpoints`, an extra_model_paths.yaml) or a hub `org/name`. Each loader
fingerprints the files the source resolves to (path, size, mtime), so editing weights on
disk invalidates the cached models although the workflow did not change. A server run
reads sources only inside the model folders (see `resolve_confined`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from graph_runtime import Bool, Choice, Folders, folders, node
from nodes.diffusion import model_files
from nodes.diffusion.hub import ModelNotFoundError, looks_like_repo_id, snapshot
from nodes.diffusion.names import PREDICTION_TYPES, SCHEDULER_NAMES
from nodes.files import may_read, spelled_safely
from nodes.lazy import lazy_module
from nodes.types import VAE, SchedulerSpec, TextEncoder, Tokenizer, UNet

checkpoints = lazy_module("nodes.diffusion.checkpoints")
_prediction_type = lazy_module("nodes.diffusion.prediction_type")
_schedulers = lazy_module("nodes.diffusion.schedulers")
memory_format = lazy_module("nodes.diffusion.memory_format")
offload = lazy_module("nodes.offload")

DEFAULT_MODEL = "noodle-tiny"
DTYPES = ["auto", "fp32", "fp16", "bf16"]
DEVICES = ["auto", "cpu", "cuda", "mps"]
COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
log = logging.getLogger("noodle.models")


# The embedded default models live in the repository's models/ folder; names there resolve
# even when the working directory (and so ./models) is elsewhere.
BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "models"


def resolve(source: str, where: Folders | Path) -> Path:
    """The file or folder a source names: the models folder, a path, a checkpoint in the
    ComfyUI folders (models/checkpoints, the extra paths, then the embedded models), then
    the hub cache (`org/name`). `where` may be a bare models folder. A run confined to its
    folders (`Folders.allowed_paths`) reads paths only inside them (`resolve_confined`)."""
    # Imported here: the ComfyUI pack's own modules import this one.
    from nodes.comfyui import model_paths

    run_folders = where if isinstance(where, Folders) else Folders(models=where)
    if run_folders.allowed_paths is not None:
        return resolve_confined(source, run_folders)
    models = run_folders.models
    literal = Path(source).expanduser()
    if not literal.is_absolute() and not (models / source).exists() and not literal.exists():
        try:
            return model_paths.find_model("checkpoints", source, run_folders)
        except FileNotFoundError:
            pass
    return Path(model_files.resolve_source(source, models))


def resolve_confined(source: str, run_folders: Folders) -> Path:
    """`resolve` for a run that may read only its model folders and allowed paths: a name
    or path inside them, a checkpoint name, or a hub id. Anything else — absent, or present
    but elsewhere — is the same `ModelNotFoundError`, so errors reveal nothing outside."""
    from nodes.comfyui import model_paths

    text = source.strip()
    models = run_folders.models
    if text and spelled_safely(text):
        roots = [*model_paths.model_roots(run_folders), *(run_folders.allowed_paths or ())]
        literal = Path(text)
        for candidate in ([literal] if literal.is_absolute() else [models / text, literal]):
            if may_read(candidate, roots) and candidate.exists():
                return candidate
        with contextlib.suppress(FileNotFoundError):
            return model_paths.find_model("checkpoints", text, run_folders)
        if looks_like_repo_id(text):
            return snapshot(text)
    raise ModelNotFoundError(f"model {source!r} not found: not a model in {models} or the "
                             "other model folders, and not an org/name id")


def model_choices(folders: Folders) -> list[str]:
    """Names the source widget offers: every checkpoint our loader reads (diffusers folders
    and single files) in the models folder, the ComfyUI folders and the embedded models."""
    from nodes.comfyui import model_paths

    try:
        names = model_paths.list_models("checkpoints", folders)
    except (OSError, ValueError) as exc:
        # A broken extra paths file must not take the whole node list down with it.
        log.warning("listing checkpoints: %s", exc)
        names = []
    readable = [n for n in names if Path(n).suffix.lower() not in model_paths.MODEL_EXTENSIONS
                or n.endswith(model_files.WEIGHT_FILE_SUFFIXES)]
    return readable or [DEFAULT_MODEL]


def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        # A .yaml beside a single file says what the model predicts (v-prediction).
        config = _prediction_type.yaml_beside(path)
        return [path] if config is None else [path, config]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def source_fingerprint(inputs: Mapping[str, Any], folders: Folders) -> str | None:
    """Path, size and mtime of every file the source resolves to."""
    source = inputs.get("source")
    if not isinstance(source, str):
        return None
    return files_fingerprint(resolve(source, folders))


def files_fingerprint(root: Path) -> str:
    """The path of a model file or folder, and the size and mtime of every file in it."""
    parts = [str(root.resolve())]
    for f in _files_of(root):
        st = f.stat()
        parts.append(f"{f.relative_to(root) if root.is_dir() else f.name}:{st.st_size}:"
                     f"{st.st_mtime_ns}")
    return "|".join(parts)


def absent_components(inputs: Mapping[str, Any], folders: Folders) -> dict[str, str]:
    """Outputs a source does not provide, with the reason, read from `model_index.json`
    without loading anything — so validation can reject a link from them (wiring the VAE
    of an unconditional DDPM repository) before a run starts."""
    source = inputs.get("source")
    if not isinstance(source, str):
        return {}
    try:
        root = resolve(source, folders)
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

    def present(name: str) -> bool:
        entry = data.get(name)
        return bool(entry) and not (isinstance(entry, list) and entry[0] is None)

    # SDXL's refiner has only the second tokenizer and encoder; the outputs carry it.
    return {name: f"{source!r} ({kind}) has no {name}" for name in COMPONENTS
            if not present(name) and not present(f"{name}_2")}


class Pipeline(NamedTuple):
    tokenizer: Tokenizer
    text_encoder: TextEncoder
    unet: UNet
    vae: VAE
    scheduler: SchedulerSpec


def _tokenizer(comp: checkpoints.Components, source: str) -> Tokenizer | None:
    """One value for one or two tokenizers (SDXL); the refiner's only one comes first."""
    first, second = comp.tokenizer, comp.tokenizer_2
    if first is None:
        first, second = second, None
    return Tokenizer(first, source, second) if first is not None else None


def _text_encoder(comp: checkpoints.Components, source: str) -> TextEncoder | None:
    """One value for one or two text encoders, encoding the SDXL way when the UNet takes
    pooled embeddings and micro-conditioning."""
    first, second = comp.text_encoder, comp.text_encoder_2
    if first is None:
        first, second = second, None
    if first is None:
        return None
    sdxl = bool(getattr(comp.unet, "needs_text_time", False))
    # diffusers' SDXL pipelines default to zeros for an absent negative prompt.
    zero_uncond = bool(comp.flags.get("force_zeros_for_empty_prompt", sdxl))
    return TextEncoder(first, source, second, sdxl=sdxl, zero_uncond=zero_uncond)


# Widget types the loaders share: a model source, a precision, a device.
Source = Annotated[str, Choice(model_choices, allow_other=True, tooltip=(
    "a diffusers folder, a .safetensors checkpoint, a name under models/, or org/name from "
    "the hub cache"))]
VAESource = Annotated[str, Choice(model_choices, allow_other=True, tooltip=(
    "a VAE folder (config.json + weights), a pipeline folder (its vae/ is used), or "
    "org/name"))]
Dtype = Annotated[str, Choice(DTYPES, tooltip="auto: fp16 on a GPU, fp32 on the CPU")]
Device = Annotated[str, Choice(DEVICES)]


@node("LoadPipeline", category="loaders", fingerprint=source_fingerprint,
      absent_outputs=absent_components, display_name="Load Pipeline")
def load_pipeline(source: Source = DEFAULT_MODEL, dtype: Dtype = "auto",
                  device: Device = "auto",
                  prediction_type: Annotated[str, Choice(PREDICTION_TYPES, tooltip=(
                      "what the model predicts; auto: a .yaml beside a single file "
                      "(parameterization: v), else the model's own setting"))] = "auto",
                  channels_last: Annotated[bool, Bool(tooltip=(
                      "store the UNet's and VAE's weights channels-last (NHWC): faster "
                      "convolutions on recent GPUs, same results"))] = False,
                  ) -> Pipeline:
    """Load every component of a diffusion pipeline from one source.

    An unconditional (DDPM) repository gives only `unet` and `scheduler`; linking one of
    its absent outputs is reported by validation. Where the models wait between uses
    follows the memory mode (`--vram`, `nodes.offload`).
    """
    run_folders = folders()
    models = run_folders.models
    where = offload.placement(device)
    comp = checkpoints.load_components(resolve(source, run_folders),
                                       dtype=where.load_dtype(dtype), device=where.load_device,
                                       models_dir=models, prediction_type=prediction_type)
    if channels_last:
        memory_format.to_channels_last(comp.unet, comp.vae)
    where.settle([comp.unet, comp.vae, comp.text_encoder, comp.text_encoder_2], dtype,
                 vae=comp.vae)
    cfg = comp.scheduler_config
    return Pipeline(
        tokenizer=_tokenizer(comp, source),
        text_encoder=_text_encoder(comp, source),
        unet=UNet(comp.unet, source) if comp.unet is not None else None,
        vae=VAE(comp.vae, source) if comp.vae is not None else None,
        scheduler=(SchedulerSpec(cfg["_class_name"], dict(cfg), source) if cfg is not None
                   else None),
    )


@node("LoadVAE", category="loaders", fingerprint=source_fingerprint, output="vae",
      display_name="Load VAE")
def load_vae(source: VAESource = DEFAULT_MODEL, dtype: Dtype = "auto",
             device: Device = "auto") -> VAE:
    """Load a VAE on its own, to swap a better one into a pipeline (e.g. sd-vae-ft-mse)."""
    run_folders = folders()
    models = run_folders.models
    where = offload.placement(device)
    model = checkpoints.load_vae(resolve(source, run_folders), dtype=where.load_dtype(dtype),
                                 device=where.load_device, models_dir=models)
    where.settle([model], dtype, vae=model)
    return VAE(model, source)


@node("LoadScheduler", category="loaders", fingerprint=source_fingerprint,
      output="scheduler", display_name="Load Scheduler")
def load_scheduler(
    source: Annotated[str, Choice(model_choices, allow_other=True)] = DEFAULT_MODEL,
) -> SchedulerSpec:
    """The scheduler described by a folder's `scheduler/scheduler_config.json`."""
    run_folders = folders()
    models = run_folders.models
    cfg = checkpoints.load_scheduler_config(resolve(source, run_folders), models_dir=models)
    return SchedulerSpec(cfg["_class_name"], dict(cfg), source)


@node("SwapScheduler", category="sampling", output="scheduler", display_name="Swap Scheduler")
def swap_scheduler(
    scheduler: SchedulerSpec,
    type: Annotated[str, Choice(SCHEDULER_NAMES)] = "EulerDiscreteScheduler",
    karras_sigmas: Annotated[bool, Bool(tooltip=(
        "Karras's noise levels (e.g. DPM++ 2M Karras); for the sigma-based schedulers"))]
    = False,
) -> SchedulerSpec:
    """Another scheduler with the same training configuration (diffusers' `from_config`):
    betas and train steps are kept, the new class's own options take their defaults."""
    overrides = {"use_karras_sigmas": True} if karras_sigmas else {}
    try:
        swapped = _schedulers.SCHEDULERS[type].from_config(scheduler.config, **overrides)
    except TypeError as exc:
        raise ValueError(f"SwapScheduler: input 'karras_sigmas': {type} has no Karras "
                         "sigmas option") from exc
    return SchedulerSpec(type, dict(swapped.config), scheduler.source)
