"""Every value that passes validation runs: the node library's real ranges.

The largest step count Denoise accepts runs with every scheduler; values that are each in
range but cannot run together, or would allocate more than memory holds, are refused by
validation naming the node and input, or (when they come from links) by the node before
it allocates anything.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
import torch

import nodes  # noqa: F401 - registers the node library
from graph_runtime import REGISTRY
from graph_runtime.graph import validate
from graph_runtime.widgets import MAX_TEXT_LENGTH
from nodes.comfyui.latent import empty_latent_image, latent_upscale_by
from nodes.diffusion.schedulers import SCHEDULERS
from nodes.images import image_grid, resize_image
from nodes.limits import MAX_BATCH_PIXELS
from nodes.primitives import float_math
from nodes.sampling import MAX_STEPS, max_steps
from nodes.types import Image, Latent, SchedulerSpec
from tests.support.paths import REPO
from tests.support.workflows import wf

SHIPPED = json.loads((REPO / "models/noodle-tiny/scheduler/scheduler_config.json").read_text())
FRAGILE = ("UniPCMultistepScheduler", "DEISMultistepScheduler",
           "DPMSolverMultistepScheduler", "LMSDiscreteScheduler")


def run_loop(name: str, config: dict[str, Any], steps: int) -> torch.Tensor:
    """Denoise's loop with a stand-in model: what the scheduler alone makes of `steps`."""
    sched = SchedulerSpec(name, config).build()
    sched.set_timesteps(steps)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x = x * sched.init_noise_sigma
    gens = [torch.Generator().manual_seed(1)]
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    for t in sched.timesteps:
        model_in = sched.scale_model_input(x, t)
        kwargs = {"generator": gens} if takes_generator else {}
        x = sched.step(0.1 * model_in, t, x, **kwargs).prev_sample
    return x


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_the_most_steps_denoise_takes_run_with_every_scheduler(name: str) -> None:
    assert max_steps(SchedulerSpec(name, SHIPPED).build()) == MAX_STEPS
    assert torch.isfinite(run_loop(name, SHIPPED, MAX_STEPS)).all()


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_fragile_solvers_run_at_the_limit_with_other_spacings(spacing: str) -> None:
    for name in FRAGILE:
        config = {**SHIPPED, "timestep_spacing": spacing, "steps_offset": 0}
        assert torch.isfinite(run_loop(name, config, MAX_STEPS)).all(), name


def test_a_scheduler_trained_on_fewer_timesteps_runs_fewer_steps() -> None:
    sched = SchedulerSpec("EulerDiscreteScheduler", {**SHIPPED, "num_train_timesteps": 100})
    assert max_steps(sched.build()) == 50


def node_errors(nodes_: dict[str, tuple[str, dict[str, Any]]]) -> set[tuple[str, str, str]]:
    """(node, input, code) of every error tied to a node."""
    return {(e["node"], e["input"], e["code"]) for e in validate(wf(nodes_), REGISTRY)
            if e["node"] is not None and e["code"] not in ("missing_input",)}


def test_denoise_values_that_cannot_run_together_are_refused() -> None:
    assert node_errors({"1": ("Denoise", {"steps": MAX_STEPS + 1})}) == {
        ("1", "steps", "value_out_of_range")}
    assert node_errors({"1": ("Denoise", {"steps": 20, "strength": 0.04})}) == {
        ("1", "strength", "invalid_combination")}
    assert node_errors({"1": ("Denoise", {"steps": 20, "strength": 0.05})}) == set()
    assert node_errors({"1": ("Denoise", {"denoising_start": 0.8, "denoising_end": 0.5})}) \
        == {("1", "denoising_start", "invalid_combination")}


@pytest.mark.parametrize("node_type", ["KSampler", "BasicScheduler"])
def test_a_tiny_denoise_cannot_ask_for_a_huge_schedule(node_type: str) -> None:
    assert node_errors({"1": (node_type, {"steps": 20, "denoise": 0.001})}) == {
        ("1", "denoise", "invalid_combination")}
    assert node_errors({"1": (node_type, {"steps": 20, "denoise": 0.002})}) == set()
    assert node_errors({"1": (node_type, {"steps": 20, "denoise": 0.0})}) == set()


@pytest.mark.parametrize(("node_type", "inputs"), [
    ("EmptyLatentImage", {"width": 16384, "height": 16384, "batch_size": 4096}),
    ("EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 257}),
    ("RandomLatents", {"width": 8192, "height": 8192, "batch_size": 5}),
    ("RandomPixelNoise", {"width": 8192, "height": 0, "batch_size": 33}),
])
def test_batches_too_large_to_allocate_are_refused(node_type: str, inputs: dict) -> None:
    assert node_errors({"1": (node_type, inputs)}) == {
        ("1", "batch_size", "invalid_combination")}
    fits = {**inputs, "batch_size": max(1, inputs["batch_size"] // 4096)}
    assert node_errors({"1": (node_type, fits)}) == set()


def test_sizes_from_links_are_refused_before_allocating() -> None:
    with pytest.raises(ValueError, match="EmptyLatentImage: 4096 x 16384 x 16384"):
        empty_latent_image(16384, 16384, 4096)
    one = Image(torch.zeros(1, 1, 1, 3).expand(1, 2048, 2048, 3))
    with pytest.raises(ValueError, match="ImageGrid"):
        image_grid(one, rows=64, cols=64)
    many = Image(torch.zeros(1, 1, 1, 3).expand(64, 64, 64, 3))
    with pytest.raises(ValueError, match="ResizeImage"):
        resize_image(many, width=8192, height=8192)
    assert 16384 * 16384 == MAX_BATCH_PIXELS


def test_scaling_a_tiny_latent_down_keeps_one_cell() -> None:
    out = latent_upscale_by(Latent(torch.zeros(1, 4, 8, 8)), scale_by=0.01)
    assert out.samples.shape == (1, 4, 1, 1)


def test_text_and_float_results_stay_in_range() -> None:
    long = "a" * (MAX_TEXT_LENGTH + 1)
    assert node_errors({"1": ("TextToConditioning", {"text": long})}) == {
        ("1", "text", "value_too_long")}
    with pytest.raises(OverflowError, match="FloatMath"):
        float_math(1e308, 10.0, "multiply")
    assert node_errors({"1": ("IntMath", {"a": 2**53})}) == {("1", "a", "value_out_of_range")}
