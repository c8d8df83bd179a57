"""Loading a single-file Stable Diffusion checkpoint: 1.x and 2.x (original LDM layout),
SDXL base and refiner (SGM layout).

One ``.safetensors`` (or safely-unpickled ``.ckpt``) holds UNet, VAE and text encoder(s).
The family is read from key names (``model_family.detect_family``); the architecture from
tensor shapes; what neither says (scheduler, prediction type, prompt-encoding flags, VAE
scale) from the family's conventions, as diffusers' ``from_single_file`` does. There is no
tokenizer in the file: the shipped CLIP vocabulary serves all of them, padding with "!"
for OpenCLIP's encoders (SD 2.x, SDXL's second) as their tokenizers do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .clip import load_tokenizer, text_encoder_from_state
from .ldm_convert import convert_unet, convert_vae, infer_unet_config, infer_vae_config
from .model_family import (
    CLIP_PREFIX,
    CONVENTIONS,
    OPENCLIP_PREFIX,
    REFINER_OPENCLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPENCLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    Family,
    apply_unet_conventions,
    detect_family,
)
from .openclip_convert import convert_openclip_text, openclip_text_config
from .prediction_type import check_prediction_type, resolve_prediction_type
from .storage import StateDict, WeightsError, build_from_state, read_weights
from .unet import UNet2DConditionModel
from .vae import AutoencoderKL

# Where each family keeps its text encoders: (OpenAI CLIP-L, OpenCLIP) prefixes.
_TEXT_PREFIXES: dict[Family, tuple[str | None, str | None]] = {
    "sd1": (CLIP_PREFIX, None),
    "sd2": (None, OPENCLIP_PREFIX),
    "sdxl": (SDXL_CLIP_PREFIX, SDXL_OPENCLIP_PREFIX),
    "sdxl_refiner": (None, REFINER_OPENCLIP_PREFIX),
}


@dataclass
class SingleFileParts:
    """The components of a single file; SDXL's OpenCLIP encoder is ``text_encoder_2`` (the
    refiner has only that one), SD 2.x's is ``text_encoder``."""

    family: Family
    tokenizer: CLIPTokenizer | None
    text_encoder: CLIPTextModel | None
    unet: UNet2DConditionModel
    vae: AutoencoderKL | None
    scheduler_config: dict[str, Any]
    tokenizer_2: CLIPTokenizer | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None
    flags: dict[str, Any] = field(default_factory=dict)


def split_prefix(state: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def openclip_tokenizer() -> CLIPTokenizer:
    """The CLIP vocabulary padding with "!" (id 0), as OpenCLIP's tokenizer does."""
    tokenizer = load_tokenizer()
    tokenizer.pad_token = "!"
    return tokenizer


def unet_from_ldm(
    state: StateDict, family: Family, dtype: torch.dtype | None, device: torch.device | str,
    pooled_width: int | None = None,
) -> UNet2DConditionModel:
    """The UNet (``model.diffusion_model.*``), its config from shapes and the family."""
    part = split_prefix(state, UNET_PREFIX)
    if not part:
        raise WeightsError("no UNet found (expected keys starting with 'model.diffusion_model.')")
    config = apply_unet_conventions(infer_unet_config(part), family, pooled_width)
    weights = convert_unet(part, config)
    return build_from_state(lambda: UNet2DConditionModel(config), weights, dtype, device,
                            "UNet")


def vae_from_ldm(
    state: StateDict, dtype: torch.dtype | None, device: torch.device | str,
    family: Family = "sd1",
) -> AutoencoderKL | None:
    """The VAE (``first_stage_model.*``), or None when the file has none. SDXL's VAE has its
    own latent scale (0.13025); the architecture is SD's."""
    part = split_prefix(state, VAE_PREFIX)
    if not part:
        return None
    conv = CONVENTIONS[family]
    config = {**infer_vae_config(part), "scaling_factor": conv.vae_scaling_factor,
              "sample_size": conv.image_size}
    weights = convert_vae(part, config)
    return build_from_state(lambda: AutoencoderKL(config), weights, dtype, device, "VAE")


def _openclip_encoder(
    part: StateDict, family: Family, dtype: torch.dtype | None, device: torch.device | str
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """SD 2.x's encoder (last layer dropped, no projection) or SDXL's second encoder (full
    depth, with the projection of its pooled embedding)."""
    sdxl = family != "sd2"
    config = openclip_text_config(part, drop_last_layer=not sdxl)
    weights = convert_openclip_text(part, config, with_projection=sdxl)
    return text_encoder_from_state(weights, config, dtype, device, with_projection=sdxl)


def single_file_scheduler_config(path: Path, family: Family,
                                 prediction_type: str = "auto") -> dict[str, Any]:
    """The family's training scheduler, with the prediction type a YAML beside the file or
    the caller sets (see ``prediction_type``)."""
    return resolve_prediction_type(prediction_type, dict(CONVENTIONS[family].scheduler), path)


def _text_encoders(state: StateDict, family: Family, dtype: torch.dtype | None,
                   device: torch.device | str) -> tuple[Any, Any]:
    """(OpenAI CLIP-L, OpenCLIP) encoders of the file, each None when absent."""
    clip_prefix, openclip_prefix = _TEXT_PREFIXES[family]
    clip_part = split_prefix(state, clip_prefix) if clip_prefix else {}
    openclip_part = split_prefix(state, openclip_prefix) if openclip_prefix else {}
    clip = text_encoder_from_state(clip_part, None, dtype, device) if clip_part else None
    openclip = _openclip_encoder(openclip_part, family, dtype, device) if openclip_part else None
    return clip, openclip


def _assemble(family: Family, clip: Any, openclip: Any, unet: UNet2DConditionModel,
              vae: AutoencoderKL | None, scheduler_config: dict[str, Any]) -> SingleFileParts:
    conv = CONVENTIONS[family]
    flags = dict(conv.flags)
    if family == "sd2":
        return SingleFileParts(family, openclip_tokenizer() if openclip else None, openclip,
                               unet, vae, scheduler_config, flags=flags)
    return SingleFileParts(
        family, load_tokenizer() if clip else None, clip, unet, vae, scheduler_config,
        tokenizer_2=openclip_tokenizer() if openclip else None, text_encoder_2=openclip,
        flags=flags)


def load_single_file(
    path: str | Path,
    dtype: torch.dtype | None,
    device: torch.device | str,
    vae_dtype: torch.dtype | None = None,
    prediction_type: str = "auto",
) -> SingleFileParts:
    """All components of a single-file checkpoint, converted to our modules."""
    path = Path(path)
    check_prediction_type(prediction_type)
    state = read_weights(path)
    try:
        family = detect_family(state)
        clip, openclip = _text_encoders(state, family, dtype, device)
        pooled = (int(openclip.config.projection_dim)
                  if isinstance(openclip, CLIPTextModelWithProjection) else None)
        unet = unet_from_ldm(state, family, dtype, device, pooled)
        vae = vae_from_ldm(state, vae_dtype or dtype, device, family)
    except (ValueError, KeyError) as exc:
        raise WeightsError(
            f"{path.name}: not a Stable Diffusion checkpoint this loader reads (SD 1.x, SD 2.x, "
            f"SDXL base or refiner, in the original single-file layout): {exc}") from exc
    scheduler_config = single_file_scheduler_config(path, family, prediction_type)
    return _assemble(family, clip, openclip, unet, vae, scheduler_config)
