"""Whole-graph ControlNet parity: txt2img_stages.json plus LoadControlNet, LoadImage and
ApplyControlNet (strength 0.7, steps 0.1..0.8) equals diffusers'
StableDiffusionControlNetPipeline (`controlnet_conditioning_scale` 0.7,
`control_guidance_start`/`end` 0.1/0.8) within 1/255, with one ControlNet and with two
chained against MultiControlNetModel; guess mode too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from graph_runtime.executor import Executor
from tests.pipeline.test_txt2img_parity import PROMPTS, SEED, STEPS, stages_overrides
from tests.support.controlnet_files import random_controlnet, save_controlnet
from tests.support.model_configs import IMAGE_SIZE
from tests.support.tiny_models import TinyModel, reference_pipeline
from tests.support.workflows import add_nodes, link, run, shipped

TOLERANCE = 1 / 255
SCHEDULER = "EulerDiscreteScheduler"
GUIDANCE = 6.0
EMBED = (8, 16)  # the tiny VAE halves the image: one stride-2 step in the embedding


@pytest.fixture(scope="module")
def controlnets(tiny_sd: TinyModel, tmp_path_factory: pytest.TempPathFactory
                ) -> list[tuple[Any, Path]]:
    root = tmp_path_factory.mktemp("controlnets")
    out = []
    for seed in (1, 2):
        model = random_controlnet(tiny_sd.pipe.unet, seed=seed,
                                  conditioning_embedding_out_channels=EMBED)
        out.append((model, save_controlnet(model, root / f"cn{seed}")))
    return out


@pytest.fixture(scope="module")
def control_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two drawn control images: a white square and a white bar on black."""
    root = tmp_path_factory.mktemp("control-images")
    paths = []
    for i, box in enumerate(((8, 8, 24, 24), (4, 12, 28, 18))):
        pixels = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        x0, y0, x1, y1 = box
        pixels[y0:y1, x0:x1] = 255
        paths.append(root / f"control{i}.png")
        PILImage.fromarray(pixels).save(paths[-1])
    return paths


def _as_tensor(path: Path) -> torch.Tensor:
    pixels = np.asarray(PILImage.open(path).convert("RGB"), np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def ours(tiny_sd: TinyModel, executor: Executor, tmp_path: Path,
         controls: list[tuple[Path, Path]], strength: float = 0.7, start: float = 0.1,
         end: float = 0.8, guess_mode: bool = False) -> np.ndarray:
    wf = shipped("txt2img_stages.json", stages_overrides(tiny_sd.folder, SCHEDULER, None))
    wf.nodes["8"]["inputs"]["guidance_scale"] = GUIDANCE
    positive, negative = link("4", "conditioning"), link("6", "conditioning")
    for n, (folder, image) in enumerate(controls):
        base = 20 + 3 * n
        add_nodes(wf, {
            str(base): ("LoadControlNet", {"source": str(folder), "dtype": "fp32",
                                           "device": "cpu"}),
            str(base + 1): ("LoadImage", {"image": str(image)}),
            str(base + 2): ("ApplyControlNet", {
                "positive": positive, "negative": negative,
                "controlnet": link(str(base), "controlnet"),
                "image": link(str(base + 1), "IMAGE"), "strength": strength,
                "start_percent": start, "end_percent": end, "guess_mode": guess_mode}),
        })
        positive, negative = link(str(base + 2), "positive"), link(str(base + 2), "negative")
    wf.nodes["8"]["inputs"]["positive"] = positive
    wf.nodes["8"]["inputs"]["negative"] = negative
    return run(executor, wf, tmp_path).outputs["9"]["IMAGE"].pixels.numpy()


def theirs(tiny_sd: TinyModel, models: list[Any], images: list[Path], strength: float = 0.7,
           start: float = 0.1, end: float = 0.8, guess_mode: bool = False) -> np.ndarray:
    import diffusers

    base = reference_pipeline("StableDiffusionPipeline", tiny_sd.folder)
    one = len(models) == 1
    pipe = diffusers.StableDiffusionControlNetPipeline(
        **{k: getattr(base, k) for k in ("vae", "text_encoder", "tokenizer", "unet")},
        controlnet=models[0] if one else models,
        scheduler=getattr(diffusers, SCHEDULER).from_config(base.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(len(PROMPTS))]
    tensors = [_as_tensor(p) for p in images]
    return pipe(prompt=PROMPTS, image=tensors[0] if one else tensors, height=IMAGE_SIZE,
                width=IMAGE_SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                generator=gens, output_type="np", guess_mode=guess_mode,
                controlnet_conditioning_scale=strength if one else [strength] * len(models),
                control_guidance_start=start if one else [start] * len(models),
                control_guidance_end=end if one else [end] * len(models)).images


def plain(tiny_sd: TinyModel, executor: Executor, tmp_path: Path) -> np.ndarray:
    return ours(tiny_sd, executor, tmp_path, [])


@pytest.mark.parametrize("guess_mode", [False, True], ids=["plain", "guess-mode"])
def test_one_controlnet_equals_diffusers(tiny_sd: TinyModel, controlnets: list[tuple[Any, Path]],
                                         control_images: list[Path], executor: Executor,
                                         tmp_path: Path, guess_mode: bool) -> None:
    model, folder = controlnets[0]
    got = ours(tiny_sd, executor, tmp_path, [(folder, control_images[0])],
               guess_mode=guess_mode)
    ref = theirs(tiny_sd, [model], control_images[:1], guess_mode=guess_mode)
    assert got.shape == ref.shape == (len(PROMPTS), IMAGE_SIZE, IMAGE_SIZE, 3)
    diff = float(np.abs(got - ref).max())
    print(f"\none ControlNet guess_mode={guess_mode}: max diff {diff * 255:.2e}/255")
    assert diff <= TOLERANCE
    # The control is not vacuous: without it the image differs well beyond the tolerance.
    assert float(np.abs(got - plain(tiny_sd, executor, tmp_path)).max()) > 10 * TOLERANCE
    if guess_mode:  # and guess mode is not the plain mode
        usual = ours(tiny_sd, executor, tmp_path, [(folder, control_images[0])])
        assert float(np.abs(got - usual).max()) > 10 * TOLERANCE


def test_two_controlnets_equal_multicontrolnet(tiny_sd: TinyModel,
                                               controlnets: list[tuple[Any, Path]],
                                               control_images: list[Path],
                                               executor: Executor, tmp_path: Path) -> None:
    pairs = [(folder, image) for (_, folder), image in zip(controlnets, control_images,
                                                           strict=True)]
    got = ours(tiny_sd, executor, tmp_path, pairs)
    ref = theirs(tiny_sd, [m for m, _ in controlnets], control_images)
    diff = float(np.abs(got - ref).max())
    print(f"\ntwo ControlNets: max diff {diff * 255:.2e}/255")
    assert diff <= TOLERANCE
    one = ours(tiny_sd, executor, tmp_path, pairs[:1])
    assert float(np.abs(got - one).max()) > 10 * TOLERANCE  # the second one counts


def test_outside_the_range_nothing_changes(tiny_sd: TinyModel,
                                           controlnets: list[tuple[Any, Path]],
                                           control_images: list[Path], executor: Executor,
                                           tmp_path: Path) -> None:
    """A range no step falls in (start 0.9, end 0.95 of 4 steps) leaves the image exactly
    as without the ControlNet, as diffusers' per-step keep of 0 does."""
    _, folder = controlnets[0]
    got = ours(tiny_sd, executor, tmp_path, [(folder, control_images[0])], start=0.9,
               end=0.95)
    assert np.array_equal(got, plain(tiny_sd, executor, tmp_path))
