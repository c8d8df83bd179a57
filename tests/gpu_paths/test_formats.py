"""Channels-last weights (LoadPipeline's `channels_last`), bf16 pipelines and the SDPA
attention path, on the tiny models."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from nodes.diffusion import attention
from nodes.diffusion.memory_format import is_channels_last
from nodes.loaders import Pipeline, load_pipeline
from tests.gpu_paths.conftest import txt2img


def test_channels_last_gives_the_same_image(tiny_pipe: Pipeline) -> None:
    pipe = load_pipeline("noodle-tiny", dtype="fp32", device="cpu", channels_last=True)
    assert is_channels_last(pipe.unet.model) and is_channels_last(pipe.vae.model)
    assert not is_channels_last(tiny_pipe.unet.model)
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        out = pipe.unet.model(x, torch.tensor(500), encoder_hidden_states=context)
        reference = tiny_pipe.unet.model(x, torch.tensor(500), encoder_hidden_states=context)
    assert torch.allclose(out, reference, atol=1e-5, rtol=0)
    # One step, prompt to pixels (more steps compound the rounding: 4e-5 after three).
    latents, image = txt2img(pipe, steps=1)
    reference_latents, reference_image = txt2img(tiny_pipe, steps=1)
    assert torch.allclose(latents.samples, reference_latents.samples, atol=1e-5, rtol=0)
    assert torch.allclose(image.pixels, reference_image.pixels, atol=1e-5, rtol=0)


def test_attention_blocks_keep_channels_last_activations(tiny_pipe: Pipeline) -> None:
    """(On the CPU the tiny maps take a matmul path that returns NCHW, so the layout is
    checked on the attention block itself: channels-last in, channels-last out.)"""
    block = next(m for m in tiny_pipe.unet.model.modules()
                 if isinstance(m, attention.Transformer2DModel))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, block.norm.num_channels, 8, 8, generator=g)
    context = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        plain = block(x.clone(), context)
        nhwc = block(x.contiguous(memory_format=torch.channels_last), context)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and plain.is_contiguous()
    assert torch.allclose(nhwc, plain, atol=1e-5, rtol=0)


def test_a_bf16_pipeline_runs_and_stays_close_to_fp32(tiny_pipe: Pipeline) -> None:
    pipe = load_pipeline("noodle-tiny", dtype="bf16", device="cpu")
    assert pipe.unet.model.dtype == torch.bfloat16
    # diffusers' upcast rule is for fp16 only: bf16 has fp32's range, so the VAE stays bf16.
    with pipe.vae.running() as vae:
        assert next(vae.parameters()).dtype == torch.bfloat16
    latents, image = txt2img(pipe, steps=1)
    _, reference = txt2img(tiny_pipe, steps=1)
    assert latents.samples.dtype == torch.bfloat16
    assert image.pixels.dtype == torch.float32 and torch.isfinite(image.pixels).all()
    assert (image.pixels - reference.pixels).abs().mean() < 8 / 255


def test_attention_runs_through_sdpa(tiny_pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    calls: list[torch.Size] = []
    real = F.scaled_dot_product_attention

    def counting(q: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(q.shape)
        return real(q, *args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counting)
    model = tiny_pipe.unet.model
    layers = [m for m in model.modules() if isinstance(m, attention.Attention)]
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        model(x, torch.tensor(10), encoder_hidden_states=torch.randn(1, 77, 32))
    assert len(calls) == len(layers) > 0  # every attention layer, once each
