"""Which Stable Diffusion family a single-file checkpoint holds, and what follows from it.

A single file carries weights only. Its family is read from key names, never from widths
alone (a fine-tune or a small test model can have any width):

- ``conditioner.embedders.*``: SGM layout, i.e. SDXL. The base has OpenAI CLIP-L as
  embedder 0 (``.transformer.``) and OpenCLIP ViT-bigG as embedder 1 (``.model.``); the
  refiner has only OpenCLIP ViT-bigG, as embedder 0.
- ``cond_stage_model.model.*``: OpenCLIP ViT-H, i.e. SD 2.x.
- ``cond_stage_model.transformer.*``: OpenAI CLIP-L, i.e. SD 1.x.
- A UNet alone: SDXL's ``label_emb`` input width tells base (2816) from refiner (2560),
  else a 1024-wide cross-attention context means SD 2.x, else SD 1.x.

Each family brings what the file cannot say: the training scheduler and prediction type
(diffusers' defaults for the family's reference repository), the pipeline's prompt-encoding
flags, the VAE's latent scale and the default image size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .storage import WeightsError

Family = Literal["sd1", "sd2", "sdxl", "sdxl_refiner"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."
LABEL_EMB_KEY = UNET_PREFIX + "label_emb.0.0.weight"

# SD 1.x's training schedule, as stable-diffusion-v1-5's scheduler_config.json has it.
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
# stable-diffusion-2-1's: diffusers reads 2.x single files with that repository's configs,
# so a 2.x file is a v-prediction model unless a YAML or the caller says otherwise (the
# 512 px 2.x "base" models are epsilon models).
SD2_SCHEDULER: dict[str, Any] = {
    **SD1_SCHEDULER,
    "_class_name": "DDIMScheduler",
    "prediction_type": "v_prediction",
}
# stable-diffusion-xl-base-1.0's (the refiner's is the same).
SDXL_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": False,
}


@dataclass(frozen=True)
class FamilyConventions:
    """What a family's single files leave unsaid, as its diffusers configs say it."""

    scheduler: dict[str, Any]
    image_size: int
    vae_scaling_factor: float
    heads_of_64_channels: bool
    upcast_attention: bool = False
    # SDXL's micro-conditioning numbers: sizes and crop (6), or sizes, crop and aesthetic
    # score (5, the refiner).
    time_ids: int | None = None
    flags: dict[str, Any] = field(default_factory=dict)


CONVENTIONS: dict[Family, FamilyConventions] = {
    "sd1": FamilyConventions(SD1_SCHEDULER, 512, 0.18215, heads_of_64_channels=False),
    "sd2": FamilyConventions(SD2_SCHEDULER, 768, 0.18215, heads_of_64_channels=True,
                             upcast_attention=True),
    "sdxl": FamilyConventions(SDXL_SCHEDULER, 1024, 0.13025, heads_of_64_channels=True,
                              time_ids=6, flags={"force_zeros_for_empty_prompt": True}),
    "sdxl_refiner": FamilyConventions(
        SDXL_SCHEDULER, 1024, 0.13025, heads_of_64_channels=True, time_ids=5,
        flags={"force_zeros_for_empty_prompt": False, "requires_aesthetics_score": True}),
}

# Real SDXL: OpenCLIP-bigG's 1280-wide pooled embedding plus 256 per micro-conditioning
# number; used only to classify a file that holds a UNet and no text encoder.
_SDXL_POOLED, _SDXL_TIME_DIM = 1280, 256


def _has(state: Mapping[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in state)


def _unet_only_family(state: Mapping[str, torch.Tensor]) -> Family:
    label = state.get(LABEL_EMB_KEY)
    if label is not None:
        width = int(label.shape[1])
        for family in ("sdxl", "sdxl_refiner"):
            time_ids = CONVENTIONS[family].time_ids or 0
            if width == _SDXL_POOLED + time_ids * _SDXL_TIME_DIM:
                return family
        raise WeightsError(f"an SDXL-style UNet (label_emb input {width} wide) without text "
                           "encoders; cannot tell base from refiner")
    context = next((v for k, v in state.items()
                    if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    return "sd2" if context is not None and int(context.shape[1]) == 1024 else "sd1"


def detect_family(state: Mapping[str, torch.Tensor]) -> Family:
    """``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"sdxl_refiner"`` from the checkpoint's key names
    (see the module docstring); a WeightsError for any other layout."""
    if _has(state, SDXL_OPENCLIP_PREFIX) or _has(state, SDXL_CLIP_PREFIX):
        return "sdxl"
    if _has(state, REFINER_OPENCLIP_PREFIX):
        return "sdxl_refiner"
    if _has(state, OPENCLIP_PREFIX):
        return "sd2"
    if _has(state, CLIP_PREFIX):
        return "sd1"
    if _has(state, UNET_PREFIX):
        return _unet_only_family(state)
    raise WeightsError("no Stable Diffusion UNet or text encoder found (expected keys "
                       "starting with 'model.diffusion_model.', 'cond_stage_model.' or "
                       "'conditioner.embedders.')")


def sdxl_time_embed_dim(label_width: int, pooled_width: int, time_ids: int) -> int:
    """The width of each micro-conditioning number's embedding (``addition_time_embed_dim``).

    SDXL's ``label_emb`` reads the pooled text embedding followed by ``time_ids`` sinusoidal
    embeddings of equal width, so ``label_width = pooled_width + time_ids * dim`` (base:
    1280 + 6 x 256 = 2816; refiner: 1280 + 5 x 256 = 2560).
    """
    rest = label_width - pooled_width
    if rest <= 0 or rest % time_ids:
        raise WeightsError(
            f"the UNet's label_emb input ({label_width}) is not the pooled text embedding "
            f"({pooled_width}) plus {time_ids} equal micro-conditioning embeddings")
    return rest // time_ids


def apply_unet_conventions(config: dict[str, Any], family: Family,
                           pooled_width: int | None) -> dict[str, Any]:
    """Complete a shape-derived UNet config with the family's conventions: 8 heads (SD 1.x)
    or 64-channel heads (2.x, XL), attention upcasting (2.x), the default sample size and,
    for SDXL, the micro-conditioning embedding width."""
    conv = CONVENTIONS[family]
    out = dict(config)
    channels = out["block_out_channels"]
    out["attention_head_dim"] = (tuple(max(1, c // 64) for c in channels)
                                 if conv.heads_of_64_channels else 8)
    out["upcast_attention"] = conv.upcast_attention
    out["sample_size"] = conv.image_size // 8
    text_time = out.get("addition_embed_type") == "text_time"
    if conv.time_ids is None:
        if text_time:
            raise WeightsError(f"a {family} checkpoint whose UNet has SDXL's label_emb")
        return out
    if not text_time:
        raise WeightsError(f"an {family} checkpoint whose UNet has no label_emb")
    out["addition_time_embed_dim"] = sdxl_time_embed_dim(
        out["projection_class_embeddings_input_dim"], pooled_width or _SDXL_POOLED,
        conv.time_ids)
    return out
