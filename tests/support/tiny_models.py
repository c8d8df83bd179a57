"""One builder per tiny model kind, each a diffusers pipeline with fixed-seed random weights
saved with `save_pretrained`: diffusers builds them (the oracle) and our loaders read the
folders. tests/conftest.py builds each kind once per session.

Kinds:
- `build_tiny_sd`: 32 px Stable Diffusion for whole-graph runs against diffusers' pipelines.
- `build_tiny_sd1`: Stable Diffusion with SD1.x conventions, exportable to a single file.
- `build_tiny_ddpm`: an unconditional pixel-space DDPM (UNet2DModel).
- `build_tiny_sd2`: Stable Diffusion with SD 2.x conventions (OpenCLIP-H-like encoder,
  v-prediction), exportable to a single file.
- `build_tiny_sdxl`: SDXL base (two text encoders, text_time UNet, SDXL's VAE settings) and,
  in a sibling folder, its refiner (second encoder only, aesthetic-score UNet).

diffusers, transformers and torch are imported when a model is built, so collecting the
tests that never use one stays fast.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.model_configs import (
    DDPM_UNET,
    SD1_UNET,
    SD1_VAE,
    SD2_SCHEDULER,
    SD2_TEXT,
    SD2_UNET,
    SD2_VAE,
    SD15_SCHEDULER,
    SD_TEXT,
    SD_UNET,
    SD_VAE,
    SDXL_REFINER_UNET,
    SDXL_SCHEDULER,
    SDXL_TEXT_G,
    SDXL_TEXT_L,
    SDXL_UNET,
    SDXL_VAE,
    tiny_text_config,
)


@dataclass(frozen=True)
class TinyModel:
    """A saved pipeline folder and the in-memory diffusers pipeline it was saved from."""

    folder: Path
    pipe: Any


def _save_sd(folder: Path, unet: Any, vae: Any, text_encoder: Any) -> TinyModel:
    """Complete an SD pipeline (SD1.5 scheduler, the shipped CLIP tokenizer) and save it."""
    import diffusers
    from transformers import CLIPTokenizer

    from nodes.diffusion.clip import SHIPPED_TOKENIZER

    # Only the keys PNDM takes: one it does not (clip_sample) would be saved with the
    # pipeline and carried into every scheduler the tests swap in.
    takes = inspect.signature(diffusers.PNDMScheduler).parameters
    scheduler = diffusers.PNDMScheduler(**{k: v for k, v in SD15_SCHEDULER.items()
                                           if k in takes})
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), unet=unet.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER)), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return TinyModel(folder, pipe)


def build_tiny_sd(folder: Path) -> TinyModel:
    """The 32 px SD pipeline (model_configs.SD_*) in `folder`."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**SD_UNET)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(**SD_VAE)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD_TEXT))
    return _save_sd(folder, unet, vae, text_encoder)


def build_tiny_sd1(folder: Path) -> TinyModel:
    """The SD1.x-convention pipeline (model_configs.SD1_*) in `folder`."""
    import diffusers
    import torch
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**SD1_UNET)
    vae = diffusers.AutoencoderKL(**SD1_VAE)
    text_encoder = CLIPTextModel(tiny_text_config())
    return _save_sd(folder, unet, vae, text_encoder)


def build_tiny_ddpm(folder: Path) -> TinyModel:
    """The unconditional DDPM pipeline (UNet2DModel + DDPMScheduler) in `folder`."""
    import diffusers
    import torch

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**DDPM_UNET).eval()
    pipe = diffusers.DDPMPipeline(unet=unet,
                                  scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000))
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return TinyModel(folder, pipe)


def build_tiny_sd2(folder: Path) -> TinyModel:
    """The SD 2.x-convention pipeline (model_configs.SD2_*) in `folder`: DDIM with
    v-prediction, and a tokenizer padding with "!" as OpenCLIP's does."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from nodes.diffusion.clip import SHIPPED_TOKENIZER

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**SD2_UNET).eval()
    vae = diffusers.AutoencoderKL(**SD2_VAE).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD2_TEXT)).eval()
    scheduler = diffusers.DDIMScheduler.from_config(SD2_SCHEDULER)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
        tokenizer=CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER), pad_token="!"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return TinyModel(folder, pipe)


@dataclass(frozen=True)
class TinySDXL:
    """The tiny SDXL base and refiner pipelines (saved folders and diffusers objects)."""

    base: TinyModel
    refiner: TinyModel


def build_tiny_sdxl(folder: Path) -> TinySDXL:
    """SDXL base in `folder`, its refiner in `folder` + "-refiner" (same second encoder and
    VAE, as the real refiner shares OpenCLIP-G and the VAE with the base)."""
    import diffusers
    import torch
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    from nodes.diffusion.clip import SHIPPED_TOKENIZER

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**SDXL_UNET).eval()
    refiner_unet = diffusers.UNet2DConditionModel(**SDXL_REFINER_UNET).eval()
    vae = diffusers.AutoencoderKL(**SDXL_VAE).eval()
    text_l = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_L)).eval()
    text_g = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_G)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER))
    # OpenCLIP's tokenizer pads with "!" (id 0) where OpenAI's pads with the end token.
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER), pad_token="!")
    scheduler = diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)
    base = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_l, text_encoder_2=text_g, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=True)
    base.save_pretrained(str(folder), safe_serialization=True)
    refiner = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=text_g, tokenizer=None,
        tokenizer_2=tokenizer_2, unet=refiner_unet, scheduler=scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    refiner_folder = folder.with_name(folder.name + "-refiner")
    refiner.save_pretrained(str(refiner_folder), safe_serialization=True)
    return TinySDXL(TinyModel(folder, base), TinyModel(refiner_folder, refiner))


def reference_pipeline(kind: str, folder: Path) -> Any:
    """diffusers' pipeline class `kind` loaded from `folder`, without a progress bar: the
    reference a graph run is compared with."""
    import diffusers

    options = {} if kind == "DDPMPipeline" else {"safety_checker": None,
                                                 "requires_safety_checker": False}
    pipe = getattr(diffusers, kind).from_pretrained(folder, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def rel_err(ours: Any, ref: Any) -> float:
    """Max absolute difference of two tensors relative to the reference's largest magnitude."""
    scale = ref.float().abs().max().clamp_min(1e-12)
    return float((ours.float() - ref.float()).abs().max() / scale)
