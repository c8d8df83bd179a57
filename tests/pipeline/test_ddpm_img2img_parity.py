"""Parity of ddpm_unconditional.json with DDPMPipeline and of img2img.json with
StableDiffusionImg2ImgPipeline (max 1/255 in fp32), and the DDPM pipeline's absent
components as validation errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from graph_runtime.executor import Executor, WorkflowInvalid
from graph_runtime.graph import validate
from graph_runtime.registry import REGISTRY
from nodes.diffusion.schedulers import SCHEDULER_NAMES
from tests.support.model_configs import IMAGE_SIZE
from tests.support.tiny_models import TinyModel, reference_pipeline
from tests.support.workflows import add_nodes, link, run, shipped

TOLERANCE = 1 / 255


def test_ddpm_equals_diffusers(tiny_ddpm: TinyModel, executor: Executor,
                               tmp_path: Path) -> None:
    seed, steps, batch = 3, 5, 2
    wf = shipped("ddpm_unconditional.json", [
        f"1.source={tiny_ddpm.folder}", f"2.seed={seed}", f"2.batch_size={batch}",
        "2.width=16", "2.height=16", f"3.steps={steps}"])
    ours = run(executor, wf, tmp_path).outputs["4"]["images"].pixels.numpy()

    pipe = reference_pipeline("DDPMPipeline", tiny_ddpm.folder)
    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
    theirs = pipe(batch_size=batch, generator=gens, num_inference_steps=steps,
                  output_type="np").images
    assert ours.shape == theirs.shape == (batch, 16, 16, 3)
    diff = float(np.abs(ours - theirs).max())
    print(f"\nDDPM max diff {diff * 255:.2e}/255")
    assert diff <= TOLERANCE
    assert float(np.abs(theirs[0] - theirs[1]).max()) > 0.05


def test_ddpm_absent_components_are_validation_errors(tiny_ddpm: TinyModel,
                                                      executor: Executor) -> None:
    """Wiring the VAE or text encoder of an unconditional repository is reported before
    anything runs, naming the node and input."""
    wf = shipped("txt2img.json", [f"1.source={tiny_ddpm.folder}"])
    errors = validate(wf, REGISTRY)
    absent = {(e["node"], e["input"]) for e in errors if e["code"] == "absent_output"}
    assert ("4", "vae") in absent and ("6", "vae") in absent
    assert ("2", "tokenizer") in absent and ("2", "text_encoder") in absent
    assert all("has no" in e["message"] for e in errors if e["code"] == "absent_output")
    with pytest.raises(WorkflowInvalid):
        executor.run(wf)


def test_conditional_unet_needs_positive(tiny_sd: TinyModel, executor: Executor,
                                         tmp_path: Path) -> None:
    wf = shipped("txt2img.json", [f"1.source={tiny_sd.folder}", "4.width=32", "4.height=32",
                                  "5.steps=2"])
    del wf.nodes["5"]["inputs"]["positive"]
    result = executor.run(wf, output_dir=tmp_path)
    assert not result.ok
    assert result.error["node"] == "5"
    assert "'positive' must be linked" in result.error["message"]


@pytest.fixture(scope="module")
def img2img_pipeline(tiny_sd: TinyModel):
    return reference_pipeline("StableDiffusionImg2ImgPipeline", tiny_sd.folder)


@pytest.fixture(scope="module")
def init_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    arr = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    arr[:] = (240, 240, 240)
    arr[8:24, 6:26] = (200, 30, 40)
    arr = np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("inputs") / "init.png"
    PILImage.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_img2img_equals_diffusers(scheduler: str, tiny_sd: TinyModel, init_image: Path,
                                  img2img_pipeline, executor: Executor,
                                  tmp_path: Path) -> None:
    import diffusers

    seed, steps, strength, guidance = 11, 5, 0.6, 5.0
    prompt, negative = "a blue circle", "a red square"
    wf = shipped("img2img.json", [
        f"1.source={tiny_sd.folder}", f"2.image={init_image}", f"3.seed={seed}",
        f"4.text={prompt}", f"5.text={negative}", f"6.steps={steps}",
        f"6.strength={strength}", f"6.guidance_scale={guidance}"])
    add_nodes(wf, {"9": ("SwapScheduler", {"scheduler": link("1", "scheduler"),
                                           "type": scheduler})})
    wf.nodes["6"]["inputs"]["scheduler"] = link("9", "scheduler")
    ours = run(executor, wf, tmp_path).outputs["7"]["IMAGE"].pixels.numpy()

    pipe = img2img_pipeline
    default = pipe.scheduler
    pipe.scheduler = getattr(diffusers, scheduler).from_config(default.config)
    try:
        theirs = pipe(prompt=prompt, negative_prompt=negative,
                      image=PILImage.open(init_image), strength=strength,
                      num_inference_steps=steps, guidance_scale=guidance,
                      generator=[torch.Generator("cpu").manual_seed(seed)],
                      output_type="np").images
    finally:
        pipe.scheduler = default
    diff = float(np.abs(ours - theirs).max())
    print(f"\nimg2img {scheduler:34s} max diff {diff * 255:.2e}/255")
    assert ours.shape == theirs.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert diff <= TOLERANCE
