"""ComfyUI's loaders: a checkpoint as MODEL, CLIP and VAE; a VAE on its own.

Names are looked up in the model folders ComfyUI users have (`models/checkpoints`,
`models/vae`, an extra_model_paths.yaml, and our flat `models/` with the embedded tiny
model), and loaded with our own loading code, so diffusers folders and single-file
checkpoints both work. The sampling conventions of MODEL come from the checkpoint's
scheduler config (SD 1.x's for single files), which is where a v-prediction model says so.
Each loader fingerprints the files it reads (path, size, mtime), so replacing a file on
disk is noticed although the workflow did not change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Annotated, Any, NamedTuple

from graph_runtime import Choice, Folders, folders, node
from nodes.comfyui import model_paths
from nodes.comfyui.types import Clip, Model
from nodes.lazy import lazy_module
from nodes.loaders import files_fingerprint
from nodes.types import VAE, UNet

checkpoints = lazy_module("nodes.diffusion.checkpoints")
_ksampling = lazy_module("nodes.diffusion.ksampling")

log = logging.getLogger("noodle.comfyui")


def _choices(kind: str) -> Callable[[Folders], list[str]]:
    def names(run_folders: Folders) -> list[str]:
        try:
            return model_paths.list_models(kind, run_folders)
        except (OSError, ValueError) as exc:
            # A broken extra paths file must not take the whole node list down with it.
            log.warning("listing %s: %s", kind, exc)
            return []

    return names


def _fingerprint(kind: str, input_name: str) -> Callable[[Mapping[str, Any], Folders],
                                                          str | None]:
    def fingerprint(inputs: Mapping[str, Any], run_folders: Folders) -> str | None:
        name = inputs.get(input_name)
        if not isinstance(name, str):
            return None
        return files_fingerprint(model_paths.find_model(kind, name, run_folders))

    return fingerprint


class Checkpoint(NamedTuple):
    MODEL: Model
    CLIP: Clip
    VAE: VAE


@node("CheckpointLoaderSimple", category="ComfyUI/loaders", display_name="Load Checkpoint",
      fingerprint=_fingerprint("checkpoints", "ckpt_name"))
def checkpoint_loader_simple(
    ckpt_name: Annotated[str, Choice(_choices("checkpoints"),
                                     tooltip="a checkpoint in the checkpoints folders")]
    = "noodle-tiny",
) -> Checkpoint:
    """Load a Stable Diffusion checkpoint (single file or diffusers folder; SD 1.x, 2.x,
    SDXL base or refiner) as the model, its text encoders and its VAE."""
    run_folders = folders()
    path = model_paths.find_model("checkpoints", ckpt_name, run_folders)
    from nodes.offload import placement  # the memory mode (--vram) decides where

    where = placement()
    comp = checkpoints.load_components(path, dtype=where.load_dtype("auto"),
                                       device=where.load_device, models_dir=run_folders.models)
    where.settle([comp.unet, comp.vae, comp.text_encoder, comp.text_encoder_2], vae=comp.vae)
    has_text = comp.text_encoder is not None or comp.text_encoder_2 is not None
    if not has_text or comp.vae is None or comp.scheduler_config is None:
        raise ValueError(f"CheckpointLoaderSimple: input 'ckpt_name': {ckpt_name!r} is not a "
                         "text-to-image checkpoint (it has no text encoder, VAE or "
                         "scheduler config); load it with LoadPipeline")
    sampling = _ksampling.DiscreteSampling.from_config(comp.scheduler_config)
    return Checkpoint(
        MODEL=Model(UNet(comp.unet, ckpt_name), sampling, {}, ckpt_name),
        CLIP=_clip(comp, ckpt_name),
        VAE=VAE(comp.vae, ckpt_name),
    )


def _clip(comp: checkpoints.Components, name: str) -> Clip:
    """The checkpoint's text encoders as one CLIP (SDXL: both, the refiner: only its
    second, OpenCLIP-G)."""
    if comp.text_encoder_2 is None:
        return Clip(comp.tokenizer, comp.text_encoder, None, {}, name)
    return Clip(comp.tokenizer, comp.text_encoder, None, {}, name,
                tokenizer_2=comp.tokenizer_2, text_encoder_2=comp.text_encoder_2)


@node("VAELoader", category="ComfyUI/loaders", output="VAE", display_name="Load VAE",
      fingerprint=_fingerprint("vae", "vae_name"))
def vae_loader(
    vae_name: Annotated[str, Choice(_choices("vae"), tooltip="a VAE in the vae folders")]
    = "",
) -> VAE:
    """Load a VAE file (a whole checkpoint's VAE, or a VAE alone) to use instead of the
    checkpoint's own."""
    run_folders = folders()
    path = model_paths.find_model("vae", vae_name, run_folders)
    from nodes.offload import placement  # the memory mode (--vram) decides where

    where = placement()
    model = checkpoints.load_vae(path, dtype=where.load_dtype("auto"), device=where.load_device,
                                 models_dir=run_folders.models)
    where.settle([model], vae=model)
    return VAE(model, vae_name)
