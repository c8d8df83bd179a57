"""workflows/hires_fix.json equals the same two passes written by hand with diffusers:
StableDiffusionPipeline at half size (latents out), the latents enlarged 2x with torch's
interpolate (bislerp: the per-cell version in test_upscale_nodes), then
StableDiffusionImg2ImgPipeline on those latents at strength 0.5, both
calls drawing from one generator per image (max 1/255, fp32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graph_runtime.executor import Executor
from tests.pipeline.test_upscale_nodes import bislerp_reference
from tests.support.model_configs import IMAGE_SIZE
from tests.support.tiny_models import TinyModel, reference_pipeline
from tests.support.workflows import link, run, shipped

PROMPT, NEGATIVE = "a red circle", "a green triangle"
SEED, STEPS, HIRES_STEPS, GUIDANCE, STRENGTH = 4, 4, 6, 6.0, 0.5
LOW = IMAGE_SIZE // 2
TOLERANCE = 1 / 255


@pytest.fixture(scope="module")
def pipes(tiny_sd: TinyModel):
    import diffusers

    txt2img = reference_pipeline("StableDiffusionPipeline", tiny_sd.folder)
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**txt2img.components)
    img2img.set_progress_bar_config(disable=True)
    return txt2img, img2img


def by_hand(pipes, scheduler: str, method: str) -> np.ndarray:
    import diffusers

    txt2img, img2img = pipes
    default = txt2img.scheduler
    try:
        for pipe in (txt2img, img2img):
            pipe.scheduler = getattr(diffusers, scheduler).from_config(default.config)
        gens = [torch.Generator("cpu").manual_seed(SEED)]
        small = txt2img(prompt=PROMPT, negative_prompt=NEGATIVE, height=LOW, width=LOW,
                        num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=gens,
                        output_type="latent").images
        h, w = small.shape[2] * 2, small.shape[3] * 2
        big = (bislerp_reference(small, w, h) if method == "bislerp"
               else F.interpolate(small, size=(h, w), mode=method))
        return img2img(prompt=PROMPT, negative_prompt=NEGATIVE, image=big, strength=STRENGTH,
                       num_inference_steps=HIRES_STEPS, guidance_scale=GUIDANCE,
                       generator=gens, output_type="np").images
    finally:
        txt2img.scheduler = img2img.scheduler = default


@pytest.mark.parametrize("scheduler,method", [
    ("EulerDiscreteScheduler", "nearest-exact"),  # as shipped
    ("PNDMScheduler", "bislerp"),
    ("EulerAncestralDiscreteScheduler", "bilinear"),  # draws noise every step
])
def test_hires_fix_equals_two_diffusers_passes(scheduler: str, method: str,
                                               tiny_sd: TinyModel, pipes,
                                               executor: Executor, tmp_path: Path) -> None:
    wf = shipped("hires_fix.json", [
        f"1.source={tiny_sd.folder}", f"2.text={PROMPT}", f"3.text={NEGATIVE}",
        f"4.seed={SEED}", f"4.width={LOW}", f"4.height={LOW}", f"5.steps={STEPS}",
        f"5.guidance_scale={GUIDANCE}", f"6.method={method}", f"7.steps={HIRES_STEPS}",
        f"7.guidance_scale={GUIDANCE}", f"10.type={scheduler}"])
    assert wf.nodes["6"]["inputs"]["scale_by"] == 2.0
    assert wf.nodes["7"]["inputs"]["strength"] == STRENGTH
    for nid in ("5", "7"):  # both passes use the workflow's scheduler node
        assert wf.nodes[nid]["inputs"]["scheduler"] == link("10", "scheduler")
    result = run(executor, wf, tmp_path)
    ours = result.outputs["8"]["IMAGE"].pixels.numpy()
    theirs = by_hand(pipes, scheduler, method)
    assert ours.shape == theirs.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    diff = float(np.abs(ours - theirs).max())
    print(f"\nhires fix {scheduler:32s} max diff {diff * 255:.2e}/255")
    assert diff <= TOLERANCE
    assert float(theirs.std()) > 0.02
    # The enlarged latents stand for the full-size image (SDXL's size conditioning).
    assert result.outputs["6"]["latents"].extra["pixel_size"] == (IMAGE_SIZE, IMAGE_SIZE)
