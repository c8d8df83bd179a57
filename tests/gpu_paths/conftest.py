"""Fixtures for the accelerator paths, all runnable on the CPU: the embedded tiny pipeline
(noodle-tiny), a txt2img run over it as plain node calls, and a one-level UNet small enough
for torch.compile's code generation to finish in seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from nodes import offload
from nodes.comfyui.vae import vae_decode
from nodes.diffusion.unet import UNet2DConditionModel
from nodes.latents import random_latents
from nodes.loaders import Pipeline, load_pipeline
from nodes.sampling import denoise
from nodes.text import text_to_conditioning
from nodes.types import Image, Latent, UNet

Txt2Img = Callable[..., tuple[Latent, Image]]
Log = list[tuple[str, str]]


@pytest.fixture()
def transfers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Log]:
    """Every `offload.move` as (model, "compute" | "offload"), models named by `watch`."""
    log: Log = []
    real = offload.move

    def recording(module: torch.nn.Module, device: Any) -> None:
        where = "offload" if device is offload.OFFLOAD_DEVICE else "compute"
        log.append((getattr(module, "_test_label", type(module).__name__), where))
        real(module, device)

    monkeypatch.setattr(offload, "move", recording)
    yield log


def txt2img(pipe: Pipeline, unet: UNet | None = None, steps: int = 3) -> tuple[Latent, Image]:
    """Prompt and negative prompt, Denoise from seeded noise, decode: the shipped txt2img
    graph as plain calls (`unet` replaces the pipeline's own)."""
    unet = unet or pipe.unet
    positive = text_to_conditioning(pipe.tokenizer, pipe.text_encoder, "a red circle")
    negative = text_to_conditioning(pipe.tokenizer, pipe.text_encoder, "blurry")
    latents = random_latents(unet, pipe.vae, seed=7)
    out = denoise(unet, pipe.scheduler, positive, latents=latents, negative=negative,
                  steps=steps)
    return out, vae_decode(out, pipe.vae)


@pytest.fixture(scope="module")
def tiny_pipe() -> Pipeline:
    """noodle-tiny in fp32 on the CPU, loaded in the default memory mode."""
    return load_pipeline("noodle-tiny", dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def mini_unet() -> UNet:
    """One cross-attention level, conditioned like noodle-tiny's UNet (32-wide text
    embeddings, 4 latent channels), random weights."""
    torch.manual_seed(0)
    model = UNet2DConditionModel(dict(
        block_out_channels=(32,), layers_per_block=1, sample_size=16,
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)).eval()
    return UNet(model, "mini")
