"""Whole-graph parity: workflows/txt2img_stages.json run by our executor, with `--set`-style
overrides, equals diffusers' StableDiffusionPipeline image for image (max 1/255, fp32) for
all 13 schedulers, a batch of two prompts, with and without a negative prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from graph_runtime.executor import Executor
from nodes.diffusion.schedulers import SCHEDULER_NAMES
from tests.support.model_configs import IMAGE_SIZE
from tests.support.tiny_models import TinyModel, reference_pipeline
from tests.support.workflows import run, shipped

PROMPTS = ["a red circle", "a blue square on a yellow background"]
NEGATIVE = "a green triangle"
SEED, STEPS, GUIDANCE = 7, 4, 6.0
TOLERANCE = 1 / 255
FIGURES: dict[tuple[str, bool], float] = {}


@pytest.fixture(scope="module")
def sd_pipeline(tiny_sd: TinyModel):
    return reference_pipeline("StableDiffusionPipeline", tiny_sd.folder)


def diffusers_images(pipe, scheduler: str, negative: str | None, seed: int = SEED) -> np.ndarray:
    import diffusers

    default = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler).from_config(default.config)
    try:
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(PROMPTS))]
        return pipe(prompt=PROMPTS, negative_prompt=None if negative is None
                    else [negative] * len(PROMPTS), height=IMAGE_SIZE, width=IMAGE_SIZE,
                    num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=gens,
                    output_type="np").images
    finally:
        pipe.scheduler = default


def stages_overrides(source: Path, scheduler: str, negative: str | None,
                     seed: int = SEED) -> list[str]:
    return [f"1.source={source}", f"2.type={scheduler}", "3.text=" + "\n".join(PROMPTS),
            "3.batch=true", f"5.text={negative or ''}", f"7.seed={seed}",
            f"7.width={IMAGE_SIZE}", f"7.height={IMAGE_SIZE}", f"7.batch_size={len(PROMPTS)}",
            f"8.steps={STEPS}", f"8.guidance_scale={GUIDANCE}"]


@pytest.mark.parametrize("negative", [None, NEGATIVE], ids=["no-negative", "negative"])
@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_stages_equal_diffusers(scheduler: str, negative: str | None, tiny_sd: TinyModel,
                                sd_pipeline, executor: Executor, tmp_path: Path) -> None:
    wf = shipped("txt2img_stages.json", stages_overrides(tiny_sd.folder, scheduler, negative))
    result = run(executor, wf, tmp_path)
    ours = result.outputs["9"]["IMAGE"].pixels.numpy()
    theirs = diffusers_images(sd_pipeline, scheduler, negative)
    assert ours.shape == theirs.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    diff = float(np.abs(ours - theirs).max())
    FIGURES[(scheduler, negative is not None)] = diff
    print(f"\n{scheduler:34s} negative={negative is not None!s:5s} max diff {diff * 255:.2e}/255")
    assert diff <= TOLERANCE
    # The comparison is not vacuous: the two images of the batch differ, and are not flat.
    assert float(np.abs(theirs[0] - theirs[1]).max()) > 0.05
    assert float(theirs.std()) > 0.02


def test_unwired_negative_is_the_empty_prompt(tiny_sd: TinyModel, sd_pipeline,
                                              executor: Executor, tmp_path: Path) -> None:
    """With no negative linked, Denoise falls back on the empty prompt's embedding that the
    encoder computed — what diffusers does when `negative_prompt` is None."""
    scheduler = "EulerAncestralDiscreteScheduler"
    wf = shipped("txt2img_stages.json", stages_overrides(tiny_sd.folder, scheduler, None))
    del wf.nodes["8"]["inputs"]["negative"]
    del wf.nodes["5"], wf.nodes["6"]
    ours = run(executor, wf, tmp_path).outputs["9"]["IMAGE"].pixels.numpy()
    theirs = diffusers_images(sd_pipeline, scheduler, None)
    assert float(np.abs(ours - theirs).max()) <= TOLERANCE


def test_one_image_of_a_batch_remade_alone(tiny_sd: TinyModel, executor: Executor,
                                           tmp_path: Path) -> None:
    """Image i of a batch uses seed + i: batch 1 at seed + 1 gives the batch's second image
    (with the second prompt)."""
    scheduler = "EulerAncestralDiscreteScheduler"
    batch = run(executor, shipped("txt2img_stages.json",
                                  stages_overrides(tiny_sd.folder, scheduler, None)), tmp_path)
    alone = shipped("txt2img_stages.json", stages_overrides(tiny_sd.folder, scheduler, None)
                    + [f"3.text={PROMPTS[1]}", "3.batch=false", "7.batch_size=1",
                       f"7.seed={SEED + 1}"])
    single = run(executor, alone, tmp_path)
    a = batch.outputs["9"]["IMAGE"].pixels[1]
    b = single.outputs["9"]["IMAGE"].pixels[0]
    assert float((a - b).abs().max()) <= TOLERANCE
