"""Clip skip on EncodeText / TextToConditioning against diffusers' `clip_skip`: prompt
embeddings equal `encode_prompt(..., clip_skip=k)` for SD and SDXL, a whole txt2img run
equals the pipeline called with `clip_skip`, and values the encoder has no layers for are
refused with the input named."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from graph_runtime.executor import Executor
from graph_runtime.graph import validate
from graph_runtime.registry import REGISTRY
from nodes import loaders, text
from nodes.types import TextEncoder, Tokenizer
from tests.support.model_configs import IMAGE_SIZE, SDXL_TEXT_G, SDXL_TEXT_L
from tests.support.tiny_models import TinyModel, TinySDXL, reference_pipeline
from tests.support.workflows import run, shipped

PROMPTS = ["a red circle", "a blue square on a yellow background"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def sd_pipe(tiny_sd: TinyModel) -> Any:
    """diffusers' SD pipeline. Its clip_skip reaches the final layer norm through
    `text_encoder.text_model`, which transformers 5's CLIPTextModel no longer has; the
    same norm is put where it looks."""
    pipe = reference_pipeline("StableDiffusionPipeline", tiny_sd.folder)
    encoder = pipe.text_encoder
    if not hasattr(encoder, "text_model"):
        encoder.text_model = SimpleNamespace(final_layer_norm=encoder.final_layer_norm)
    return pipe


@pytest.fixture(scope="module")
def parts(tiny_sd: TinyModel) -> Any:
    return loaders.load_pipeline(str(tiny_sd.folder), dtype="fp32", device="cpu")


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_sd_equals_diffusers(parts: Any, sd_pipe: Any, clip_skip: int) -> None:
    cond = text.text_to_conditioning(parts.tokenizer, parts.text_encoder, "\n".join(PROMPTS),
                                     batch=True, clip_skip=clip_skip)
    theirs, their_uncond = sd_pipe.encode_prompt(PROMPTS, "cpu", 1, True,
                                                 clip_skip=clip_skip)
    torch.testing.assert_close(cond.embeds, theirs, **TOL)
    # diffusers reads the unconditional input at the last layer whatever clip_skip says.
    torch.testing.assert_close(cond.uncond, their_uncond[:1], **TOL)
    plain = text.text_to_conditioning(parts.tokenizer, parts.text_encoder, PROMPTS[0])
    assert not torch.allclose(cond.embeds[:1], plain.embeds, atol=1e-3)


def test_sd2_equals_diffusers(tiny_sd2: TinyModel) -> None:
    """SD 2.x conventions: OpenCLIP's tokenizer pads with "!" and the encoder is wider."""
    parts = loaders.load_pipeline(str(tiny_sd2.folder), dtype="fp32", device="cpu")
    pipe = reference_pipeline("StableDiffusionPipeline", tiny_sd2.folder)
    encoder = pipe.text_encoder
    if not hasattr(encoder, "text_model"):
        encoder.text_model = SimpleNamespace(final_layer_norm=encoder.final_layer_norm)
    cond = text.text_to_conditioning(parts.tokenizer, parts.text_encoder, PROMPTS[1],
                                     clip_skip=1)
    theirs, _ = pipe.encode_prompt(PROMPTS[1], "cpu", 1, False, clip_skip=1)
    torch.testing.assert_close(cond.embeds, theirs, **TOL)


@pytest.fixture(scope="module")
def deep_sdxl(tiny_sdxl: TinySDXL) -> Any:
    """The tiny SDXL with four-layer text encoders, deep enough for diffusers' clip_skip 2
    on both (the fixture's CLIP-L has two layers)."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    base = tiny_sdxl.base.pipe
    torch.manual_seed(1)
    text_l = CLIPTextModel(CLIPTextConfig(**{**SDXL_TEXT_L, "num_hidden_layers": 4})).eval()
    text_g = CLIPTextModelWithProjection(
        CLIPTextConfig(**{**SDXL_TEXT_G, "num_hidden_layers": 4})).eval()
    return diffusers.StableDiffusionXLPipeline(
        vae=base.vae, text_encoder=text_l, text_encoder_2=text_g, tokenizer=base.tokenizer,
        tokenizer_2=base.tokenizer_2, unet=base.unet, scheduler=base.scheduler,
        force_zeros_for_empty_prompt=True)


@pytest.mark.parametrize("clip_skip", [0, 1, 2])
def test_sdxl_equals_diffusers(deep_sdxl: Any, clip_skip: int) -> None:
    pipe = deep_sdxl
    tokenizer = Tokenizer(pipe.tokenizer, "", pipe.tokenizer_2)
    encoder = TextEncoder(pipe.text_encoder, "", pipe.text_encoder_2, sdxl=True,
                          zero_uncond=True)
    cond = text.text_to_conditioning(tokenizer, encoder, "\n".join(PROMPTS), batch=True,
                                     clip_skip=clip_skip)
    theirs, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu",
                                              clip_skip=clip_skip or None)
    torch.testing.assert_close(cond.embeds, theirs, **TOL)
    torch.testing.assert_close(cond.options["pooled_output"], pooled, **TOL)


def test_sdxl_fixture_equals_diffusers(tiny_sdxl: TinySDXL) -> None:
    parts = loaders.load_pipeline(str(tiny_sdxl.base.folder), dtype="fp32", device="cpu")
    pipe = reference_pipeline("StableDiffusionXLPipeline", tiny_sdxl.base.folder)
    cond = text.text_to_conditioning(parts.tokenizer, parts.text_encoder, PROMPTS[1],
                                     clip_skip=1)
    theirs, _, pooled, _ = pipe.encode_prompt(PROMPTS[1], device="cpu", clip_skip=1)
    torch.testing.assert_close(cond.embeds, theirs, **TOL)
    torch.testing.assert_close(cond.options["pooled_output"], pooled, **TOL)
    with pytest.raises(ValueError, match=r"TextToConditioning: input 'clip_skip' is 2.*"
                                         r"at most 1"):
        text.text_to_conditioning(parts.tokenizer, parts.text_encoder, "x", clip_skip=2)


def test_txt2img_with_clip_skip_equals_diffusers(tiny_sd: TinyModel, sd_pipe: Any,
                                                 executor: Executor, tmp_path: Path) -> None:
    import diffusers

    seed, steps, guidance = 5, 4, 6.0
    wf = shipped("txt2img_stages.json", [
        f"1.source={tiny_sd.folder}", "2.type=EulerDiscreteScheduler",
        f"3.text={PROMPTS[1]}", "4.clip_skip=1", f"7.seed={seed}", f"7.width={IMAGE_SIZE}",
        f"7.height={IMAGE_SIZE}", f"8.steps={steps}", f"8.guidance_scale={guidance}"])
    del wf.nodes["8"]["inputs"]["negative"]
    del wf.nodes["5"], wf.nodes["6"]
    ours = run(executor, wf, tmp_path).outputs["9"]["IMAGE"].pixels.numpy()
    default = sd_pipe.scheduler
    sd_pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(default.config)
    try:
        theirs = sd_pipe(prompt=PROMPTS[1], height=IMAGE_SIZE, width=IMAGE_SIZE,
                         num_inference_steps=steps, guidance_scale=guidance, clip_skip=1,
                         generator=torch.Generator("cpu").manual_seed(seed),
                         output_type="np").images
        plain = sd_pipe(prompt=PROMPTS[1], height=IMAGE_SIZE, width=IMAGE_SIZE,
                        num_inference_steps=steps, guidance_scale=guidance,
                        generator=torch.Generator("cpu").manual_seed(seed),
                        output_type="np").images
    finally:
        sd_pipe.scheduler = default
    assert float(np.abs(ours - theirs).max()) <= 1 / 255
    assert float(np.abs(plain - theirs).max()) > 0.01  # clip skip changed the image


def test_out_of_range_is_refused(parts: Any) -> None:
    wf = shipped("txt2img_stages.json", ["4.clip_skip=40", "6.clip_skip=-1"])
    errors = {(e["node"], e["input"], e["code"]) for e in validate(wf, REGISTRY)}
    assert {("4", "clip_skip", "value_out_of_range"),
            ("6", "clip_skip", "value_out_of_range")} <= errors
    with pytest.raises(ValueError, match=r"EncodeText: input 'clip_skip' is 3, but this text "
                                         r"encoder has 2 layer\(s\): at most 2"):
        text.encode_text(parts.text_encoder, text.tokenize(parts.tokenizer, "x"), 3)
    # ComfyUI reads a layer past the first as the last one: `comfy` mode stops there.
    comfy = text.tokenize(parts.tokenizer, "x", weighting="comfy")
    with pytest.raises(ValueError, match=r"input 'clip_skip' is 2, .*at most 1"):
        text.encode_text(parts.text_encoder, comfy, 2)
