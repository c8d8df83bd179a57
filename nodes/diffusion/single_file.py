"""Loading a single-file Stable Diffusion 1.x checkpoint (original LDM layout).

One ``.safetensors`` (or safely-unpickled ``.ckpt``) holds UNet, VAE and CLIP text encoder.
It carries no tokenizer and no scheduler, so the shipped CLIP vocabulary and SD1.x's
training schedule (PNDM, scaled-linear betas 0.00085..0.012) are used, as diffusers does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from .clip import load_tokenizer, text_encoder_from_state
from .ldm_convert import convert_unet, convert_vae, infer_unet_config, infer_vae_config
from .storage import StateDict, WeightsError, build_from_state, read_weights
from .unet import UNet2DConditionModel
from .vae import AutoencoderKL

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."

SD1_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "clip_sample": False,
}


@dataclass
class SingleFileParts:
    tokenizer: CLIPTokenizer | None
    text_encoder: CLIPTextModel | None
    unet: UNet2DConditionModel
    vae: AutoencoderKL | None
    scheduler_config: dict[str, Any]


def split_prefix(state: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def unet_from_ldm(
    state: StateDict, dtype: torch.dtype | None, device: torch.device | str
) -> UNet2DConditionModel:
    """The UNet of an LDM checkpoint (``model.diffusion_model.*``), config from shapes."""
    part = split_prefix(state, UNET_PREFIX)
    if not part:
        raise WeightsError("no UNet found (expected keys starting with 'model.diffusion_model.')")
    config = infer_unet_config(part)
    weights = convert_unet(part, config)
    return build_from_state(lambda: UNet2DConditionModel(config), weights, dtype, device,
                            "UNet")


def vae_from_ldm(
    state: StateDict, dtype: torch.dtype | None, device: torch.device | str
) -> AutoencoderKL | None:
    """The VAE of an LDM checkpoint (``first_stage_model.*``), or None when it has none."""
    part = split_prefix(state, VAE_PREFIX)
    if not part:
        return None
    config = infer_vae_config(part)
    weights = convert_vae(part, config)
    return build_from_state(lambda: AutoencoderKL(config), weights, dtype, device, "VAE")


def load_single_file(
    path: str | Path,
    dtype: torch.dtype | None,
    device: torch.device | str,
    vae_dtype: torch.dtype | None = None,
) -> SingleFileParts:
    """All components of an SD1.x single-file checkpoint, converted to our modules."""
    path = Path(path)
    state = read_weights(path)
    if any(k.startswith(OPENCLIP_PREFIX) for k in state):
        raise WeightsError(
            f"{path.name}: SD2.x single files (OpenCLIP text encoder) are not supported; "
            "use the model's diffusers folder instead"
        )
    try:
        unet = unet_from_ldm(state, dtype, device)
        vae = vae_from_ldm(state, vae_dtype or dtype, device)
        text_state = split_prefix(state, TEXT_PREFIX)
        text_encoder = (text_encoder_from_state(text_state, None, dtype, device)
                        if text_state else None)
    except (WeightsError, KeyError) as exc:
        raise WeightsError(f"{path.name}: not a Stable Diffusion 1.x checkpoint ({exc})") from exc
    return SingleFileParts(
        tokenizer=load_tokenizer() if text_encoder is not None else None,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler_config=dict(SD1_SCHEDULER),
    )
