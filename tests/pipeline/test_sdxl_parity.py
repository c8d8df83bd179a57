"""SDXL through the unchanged shipped workflows, against diffusers' SDXL pipelines on the
tiny SDXL (two text encoders, text_time UNet, SDXL's VAE settings): txt2img_stages.json
(four schedulers, batch 2, with and without a negative prompt), img2img.json, the
micro-conditioning node, and sdxl_refiner.json's base-then-refiner hand-over. All within
1/255 in fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from graph_runtime.executor import Executor
from tests.pipeline.test_ddpm_img2img_parity import init_image  # noqa: F401 (fixture)
from tests.pipeline.test_txt2img_parity import NEGATIVE, PROMPTS, stages_overrides
from tests.support.model_configs import IMAGE_SIZE
from tests.support.tiny_models import TinySDXL
from tests.support.workflows import add_nodes, link, run, shipped

SEED, STEPS, GUIDANCE = 7, 4, 5.0
TOLERANCE = 1 / 255
SCHEDULERS = ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "DDIMScheduler",
              "UniPCMultistepScheduler"]


def _pipeline(kind: str, folder: Path):
    import diffusers

    pipe = getattr(diffusers, kind).from_pretrained(folder, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl_pipeline(tiny_sdxl: TinySDXL):
    return _pipeline("StableDiffusionXLPipeline", tiny_sdxl.base.folder)


@pytest.fixture(scope="module")
def sdxl_img2img(tiny_sdxl: TinySDXL):
    return _pipeline("StableDiffusionXLImg2ImgPipeline", tiny_sdxl.base.folder)


@pytest.fixture(scope="module")
def sdxl_refiner(tiny_sdxl: TinySDXL):
    return _pipeline("StableDiffusionXLImg2ImgPipeline", tiny_sdxl.refiner.folder)


def _generators(n: int, seed: int = SEED) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def _with_scheduler(pipe, scheduler: str, call):
    import diffusers

    default = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler).from_config(default.config)
    try:
        return call(pipe)
    finally:
        pipe.scheduler = default


def _max_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max())


@pytest.mark.parametrize("negative", [None, NEGATIVE], ids=["empty-negative", "negative"])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_stages_workflow_equals_sdxl_pipeline(scheduler: str, negative: str | None,
                                              tiny_sdxl: TinySDXL, sdxl_pipeline,
                                              executor: Executor, tmp_path: Path) -> None:
    wf = shipped("txt2img_stages.json", stages_overrides(tiny_sdxl.base.folder, scheduler,
                                                         negative)
                 + [f"8.guidance_scale={GUIDANCE}"])
    ours = run(executor, wf, tmp_path).outputs["9"]["IMAGE"].pixels.numpy()
    # The workflow's negative node holds "" when there is no negative prompt: diffusers
    # encodes an explicit "" too (only None means zeros).
    theirs = _with_scheduler(sdxl_pipeline, scheduler, lambda pipe: pipe(
        prompt=PROMPTS, negative_prompt=[negative or ""] * len(PROMPTS), height=IMAGE_SIZE,
        width=IMAGE_SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
        generator=_generators(len(PROMPTS)), output_type="np").images)
    diff = _max_diff(ours, theirs)
    print(f"\nSDXL {scheduler:30s} negative={negative is not None!s:5s} "
          f"max diff {diff * 255:.2e}/255")
    assert diff <= TOLERANCE
    assert float(np.abs(theirs[0] - theirs[1]).max()) > 0.05
    assert float(theirs.std()) > 0.02


def test_unwired_negative_is_zeros(tiny_sdxl: TinySDXL, sdxl_pipeline, executor: Executor,
                                   tmp_path: Path) -> None:
    """SDXL base says force_zeros_for_empty_prompt: with no negative linked, the
    unconditional input is zeros, as diffusers' `negative_prompt=None`, and that differs
    from encoding the empty prompt."""
    scheduler = "EulerDiscreteScheduler"
    wf = shipped("txt2img_stages.json", stages_overrides(tiny_sdxl.base.folder, scheduler,
                                                         None)
                 + [f"8.guidance_scale={GUIDANCE}"])
    with_empty = run(executor, wf, tmp_path).outputs["9"]["IMAGE"].pixels.numpy()
    del wf.nodes["8"]["inputs"]["negative"]
    del wf.nodes["5"], wf.nodes["6"]
    ours = run(executor, wf, tmp_path).outputs["9"]["IMAGE"].pixels.numpy()
    theirs = _with_scheduler(sdxl_pipeline, scheduler, lambda pipe: pipe(
        prompt=PROMPTS, height=IMAGE_SIZE, width=IMAGE_SIZE, num_inference_steps=STEPS,
        guidance_scale=GUIDANCE, generator=_generators(len(PROMPTS)), output_type="np").images)
    assert _max_diff(ours, theirs) <= TOLERANCE
    assert float(np.abs(ours - with_empty).max()) > 10 * TOLERANCE


def test_micro_conditioning_node_equals_diffusers_arguments(
        tiny_sdxl: TinySDXL, sdxl_pipeline, executor: Executor, tmp_path: Path) -> None:
    scheduler = "EulerDiscreteScheduler"
    wf = shipped("txt2img_stages.json", stages_overrides(tiny_sdxl.base.folder, scheduler,
                                                         NEGATIVE)
                 + [f"8.guidance_scale={GUIDANCE}"])
    plain = run(executor, wf, tmp_path).outputs["9"]["IMAGE"].pixels.numpy()
    add_nodes(wf, {"20": ("SDXLConditioning", {
        "conditioning": link("4", "conditioning"), "original_width": 48,
        "original_height": 64, "crop_left": 8, "crop_top": 16, "target_width": 24,
        "target_height": 40})})
    wf.nodes["8"]["inputs"]["positive"] = link("20", "conditioning")
    ours = run(executor, wf, tmp_path).outputs["9"]["IMAGE"].pixels.numpy()
    theirs = _with_scheduler(sdxl_pipeline, scheduler, lambda pipe: pipe(
        prompt=PROMPTS, negative_prompt=[NEGATIVE] * len(PROMPTS), height=IMAGE_SIZE,
        width=IMAGE_SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
        original_size=(64, 48), crops_coords_top_left=(16, 8), target_size=(40, 24),
        generator=_generators(len(PROMPTS)), output_type="np").images)
    assert _max_diff(ours, theirs) <= TOLERANCE
    # The sizes reach the UNet: the image moves by more than the tolerance.
    assert float(np.abs(ours - plain).max()) > 3 * TOLERANCE


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_img2img_workflow_equals_sdxl_img2img(scheduler: str, tiny_sdxl: TinySDXL,
                                              init_image: Path,  # noqa: F811
                                              sdxl_img2img, executor: Executor,
                                              tmp_path: Path) -> None:
    seed, steps, strength = 11, 5, 0.6
    prompt, negative = "a blue circle", "a red square"
    wf = shipped("img2img.json", [
        f"1.source={tiny_sdxl.base.folder}", f"2.image={init_image}", f"3.seed={seed}",
        f"4.text={prompt}", f"5.text={negative}", f"6.steps={steps}",
        f"6.strength={strength}", f"6.guidance_scale={GUIDANCE}"])
    add_nodes(wf, {"9": ("SwapScheduler", {"scheduler": link("1", "scheduler"),
                                           "type": scheduler})})
    wf.nodes["6"]["inputs"]["scheduler"] = link("9", "scheduler")
    ours = run(executor, wf, tmp_path).outputs["7"]["IMAGE"].pixels.numpy()
    theirs = _with_scheduler(sdxl_img2img, scheduler, lambda pipe: pipe(
        prompt=prompt, negative_prompt=negative, image=PILImage.open(init_image),
        strength=strength, num_inference_steps=steps, guidance_scale=GUIDANCE,
        generator=[torch.Generator("cpu").manual_seed(seed)], output_type="np").images)
    diff = _max_diff(ours, theirs)
    print(f"\nSDXL img2img {scheduler:30s} max diff {diff * 255:.2e}/255")
    assert diff <= TOLERANCE


def test_refiner_workflow_equals_base_then_refiner(tiny_sdxl: TinySDXL, sdxl_pipeline,
                                                   sdxl_refiner, executor: Executor,
                                                   tmp_path: Path) -> None:
    """diffusers' SDXL guide: base with denoising_end=0.8 and latent output, then the
    refiner with denoising_start=0.8 on those latents."""
    steps, split, prompt = 10, 0.8, "a lion jumping from a stone at night"
    wf = shipped("sdxl_refiner.json", [
        f"1.source={tiny_sdxl.base.folder}", f"2.source={tiny_sdxl.refiner.folder}",
        f"3.text={prompt}", f"6.text={prompt}", f"4.width={IMAGE_SIZE}",
        f"4.height={IMAGE_SIZE}", f"4.seed={SEED}", f"5.steps={steps}", f"7.steps={steps}"])
    ours = run(executor, wf, tmp_path).outputs["8"]["IMAGE"].pixels.numpy()
    latents = sdxl_pipeline(prompt=prompt, height=IMAGE_SIZE, width=IMAGE_SIZE,
                            num_inference_steps=steps, denoising_end=split,
                            generator=_generators(1), output_type="latent").images
    theirs = sdxl_refiner(prompt=prompt, num_inference_steps=steps, denoising_start=split,
                          image=latents, output_type="np").images
    diff = _max_diff(ours, theirs)
    print(f"\nSDXL base + refiner max diff {diff * 255:.2e}/255")
    assert diff <= TOLERANCE
    # The hand-over matters: the base's own full run gives another image.
    full = sdxl_pipeline(prompt=prompt, height=IMAGE_SIZE, width=IMAGE_SIZE,
                         num_inference_steps=steps, generator=_generators(1),
                         output_type="np").images
    assert float(np.abs(full - theirs).max()) > 3 * TOLERANCE


def test_txt2img_and_compare_schedulers_run_unchanged(tiny_sdxl: TinySDXL, sdxl_pipeline,
                                                      executor: Executor,
                                                      tmp_path: Path) -> None:
    """The default workflow and the scheduler comparison, only the source (and, for time,
    the size and step counts) changed: each image is diffusers' for its scheduler."""
    prompt, seed = "a red circle", 3
    wf = shipped("txt2img.json", [f"1.source={tiny_sdxl.base.folder}", f"2.text={prompt}",
                                  f"4.width={IMAGE_SIZE}", f"4.height={IMAGE_SIZE}",
                                  f"4.seed={seed}", "5.steps=4"])
    ours = run(executor, wf, tmp_path).outputs["6"]["IMAGE"].pixels.numpy()
    theirs = sdxl_pipeline(prompt=prompt, negative_prompt="", height=IMAGE_SIZE,
                           width=IMAGE_SIZE, num_inference_steps=4, guidance_scale=7.5,
                           generator=_generators(1, seed), output_type="np").images
    assert _max_diff(ours, theirs) <= TOLERANCE

    swaps = {"10": "PNDMScheduler", "11": "DDIMScheduler", "12": "LMSDiscreteScheduler",
             "13": "EulerDiscreteScheduler", "14": "EulerAncestralDiscreteScheduler",
             "15": "DPMSolverMultistepScheduler"}
    steps = 3
    wf = shipped("compare_schedulers.json", [
        f"1.source={tiny_sdxl.base.folder}", f"4.width={IMAGE_SIZE}",
        f"4.height={IMAGE_SIZE}", *(f"{20 + i}.steps={steps}" for i in range(6))])
    result = run(executor, wf, tmp_path)
    for i, (_, scheduler) in enumerate(swaps.items()):
        ours = result.outputs[str(30 + i)]["IMAGE"].pixels.numpy()
        theirs = _with_scheduler(sdxl_pipeline, scheduler, lambda pipe: pipe(
            prompt="a green triangle", negative_prompt="", height=IMAGE_SIZE,
            width=IMAGE_SIZE, num_inference_steps=steps, guidance_scale=7.5,
            generator=_generators(1, 8), output_type="np").images)
        assert _max_diff(ours, theirs) <= TOLERANCE, scheduler
