"""Fixtures: tiny models built and saved by diffusers/transformers themselves."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from dm_helpers import SF_UNET, SF_VAE, tiny_text_config

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@dataclass
class TinySD:
    folder: Path
    pipe: object  # diffusers.StableDiffusionPipeline


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> TinySD:
    """A Stable Diffusion pipeline folder written by diffusers' save_pretrained."""
    import diffusers
    from transformers import CLIPTextModel, CLIPTokenizer

    from nodes.diffusion.clip import SHIPPED_TOKENIZER

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**SF_UNET)
    vae = diffusers.AutoencoderKL(**SF_VAE)
    text_encoder = CLIPTextModel(tiny_text_config())
    tokenizer = CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER))
    scheduler = diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path_factory.mktemp("models") / "tiny-sd"
    pipe.save_pretrained(str(folder))
    return TinySD(folder, pipe)


@pytest.fixture(scope="session")
def tiny_ddpm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A DDPM (UNet2DModel) pipeline folder written by diffusers."""
    import diffusers
    from dm_helpers import UNET2D_CONFIGS

    torch.manual_seed(1)
    unet = diffusers.UNet2DModel(**UNET2D_CONFIGS["ddpm_like"])
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    folder = tmp_path_factory.mktemp("models") / "tiny-ddpm"
    pipe.save_pretrained(str(folder))
    return folder, unet
