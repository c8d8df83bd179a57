"""The procedural scenes and the classifier that grades the tiny model's images.

The classifier is only a fair judge if it is right on ground truth, so it is checked against
rendered scenes whose colour, shape and background are known.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from tools import shapes
from tools.tiny_model import DDPM_SCHEDULER_CONFIG, SD_SCHEDULER_CONFIG, alphas_cumprod


def test_dataset_is_reproducible_from_its_seed() -> None:
    a_images, a_captions, _ = shapes.make_dataset(40, seed=3)
    b_images, b_captions, _ = shapes.make_dataset(40, seed=3)
    c_images, _, _ = shapes.make_dataset(40, seed=4)
    assert np.array_equal(a_images, b_images) and a_captions == b_captions
    assert not np.array_equal(a_images, c_images)
    assert a_images.shape == (40, 64, 64, 3) and a_images.dtype == np.uint8


def test_classifier_is_exact_on_rendered_scenes() -> None:
    images, _, scenes = shapes.make_dataset(300, seed=11)
    wrong = []
    for image, scene in zip(images, scenes, strict=True):
        got = shapes.classify(image)
        if (got.colour, got.shape, got.background) != (scene.colour, scene.shape,
                                                       scene.background):
            wrong.append((scene, got))
    assert not wrong, wrong[:3]


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_classifier_survives_blur_and_downscaling(shape: str) -> None:
    """Generated images are soft-edged; grading must not hinge on crisp pixels."""
    for colour in shapes.COLOURS:
        scene = shapes.Scene(shape, colour, "white", 32, 32.0, 33.0)
        soft = shapes.render(scene).resize((32, 32), Image.Resampling.BILINEAR)
        got = shapes.classify(soft.resize((64, 64), Image.Resampling.BILINEAR))
        assert (got.colour, got.shape) == (colour, shape)


def test_classifier_finds_nothing_on_a_blank_image() -> None:
    blank = Image.new("RGB", (64, 64), (255, 255, 255))
    got = shapes.classify(blank)
    assert got.colour is None and got.shape is None and got.background == "white"


def test_captions_name_the_scene_and_any_non_default_background() -> None:
    rng = random.Random(0)
    for _ in range(200):
        scene = shapes.random_scene(rng)
        text = shapes.caption(scene, rng)
        assert text.startswith(f"a {scene.colour} {scene.shape}")
        if scene.background != "white":
            assert text.endswith(f"on a {scene.background} background")
        assert scene.colour != scene.background


def test_prompt_set_covers_every_colour_and_shape() -> None:
    prompts = shapes.prompts()
    assert len(prompts) == len(shapes.COLOURS) * len(shapes.SHAPES)
    assert {(c, s) for _, c, s in prompts} == {(c, s) for c in shapes.COLOURS
                                               for s in shapes.SHAPES}


@pytest.mark.parametrize("config", [SD_SCHEDULER_CONFIG, DDPM_SCHEDULER_CONFIG])
def test_training_noise_schedule_matches_diffusers(config: dict) -> None:
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=config["num_train_timesteps"],
                                  beta_start=config["beta_start"], beta_end=config["beta_end"],
                                  beta_schedule=config["beta_schedule"])
    torch.testing.assert_close(alphas_cumprod(config), ref.alphas_cumprod.float(),
                               rtol=1e-5, atol=1e-6)
