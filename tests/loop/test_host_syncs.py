"""No host syncs per step: Denoise over our schedulers and the pack's KSampler over its
samplers, on the embedded tiny model, make as many device reads (and host-built tensors)
at 8 steps as at 4 — what they make at all is per-run setup (`sync_counter`).

Left out, with the reason:
- DEIS (Denoise): its per-step coefficients are computed on the host from the CPU sigma
  table, in numpy's float32 log to match the reference bit for bit; no device value is read,
  but the counter cannot tell a CPU table from a device tensor.
- dpmpp_sde (KSampler): its Brownian tree is also queried at each step's midpoint, a noise
  level computed on the device; reading that value back keeps ComfyUI's noise exactly.
- ControlNet and timestep-ranged conditioning in KSampler read the step's noise level to
  decide what applies (not run here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from tests.loop.sync_counter import HostSyncs, growth
from tests.support.paths import MODELS

pytestmark = pytest.mark.skipif(not (MODELS / "noodle-tiny").exists(),
                                reason="the embedded model is not here")

SIZE = 32  # pixels: a 4 x 4 latent, enough to run every step
SCHEDULERS = ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
              "DPMSolverMultistepScheduler", "DDIMScheduler", "UniPCMultistepScheduler",
              "LMSDiscreteScheduler", "HeunDiscreteScheduler", "PNDMScheduler",
              "DDPMScheduler", "KDPM2DiscreteScheduler", "DPMSolverSinglestepScheduler"]
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "lms", "dpmpp_2s_ancestral",
            "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ddim", "uni_pc"]


def _counted(unet: torch.nn.Module, run: Callable[[int], Any], steps: int) -> HostSyncs:
    counter = HostSyncs()
    remove = counter.arm_on(unet)
    try:
        with counter:
            run(steps)
    finally:
        remove()
    return counter


def assert_no_per_step_syncs(unet: torch.nn.Module, run: Callable[[int], Any]) -> None:
    short, long = _counted(unet, run, 4), _counted(unet, run, 8)
    assert long.live, "the model was never called: nothing was counted"
    assert growth(short, long) == {}, "conversions per step (site: 4 steps, 8 steps)"


@pytest.fixture(scope="module")
def denoise_inputs() -> dict[str, Any]:
    from nodes.latents import random_latents
    from nodes.loaders import load_pipeline
    from nodes.text import text_to_conditioning

    pipe = load_pipeline("noodle-tiny")
    return {"pipe": pipe,
            "positive": text_to_conditioning(pipe.tokenizer, pipe.text_encoder, "a red circle"),
            "negative": text_to_conditioning(pipe.tokenizer, pipe.text_encoder, ""),
            "latents": random_latents(pipe.unet, pipe.vae, SIZE, SIZE, 1, 0)}


@pytest.mark.parametrize(("scheduler", "guidance"),
                         [(name, 5.0) for name in SCHEDULERS]
                         + [("EulerDiscreteScheduler", 1.0)])  # one UNet call, no guidance
def test_denoise_reads_nothing_back_per_step(denoise_inputs: dict[str, Any], scheduler: str,
                                            guidance: float) -> None:
    from nodes.loaders import swap_scheduler
    from nodes.sampling import denoise

    inputs = denoise_inputs
    pipe = inputs["pipe"]
    spec = swap_scheduler(pipe.scheduler, scheduler)

    def run(steps: int) -> Any:
        return denoise(pipe.unet, spec, inputs["positive"], inputs["latents"],
                       inputs["negative"], steps=steps, guidance_scale=guidance)

    assert_no_per_step_syncs(pipe.unet.model, run)


def test_previews_add_no_read_per_step(denoise_inputs: dict[str, Any]) -> None:
    """With a listener wanting a preview every step, the loop only hands each preview a
    device-side copy: the reads and the image are made on the preview worker's thread
    (torch function modes are per thread, so only the sampling thread is counted)."""
    from graph_runtime import Folders
    from graph_runtime.context import PreviewPolicy, RunContext, activate, deactivate
    from nodes.loaders import swap_scheduler
    from nodes.sampling import denoise

    inputs = denoise_inputs
    pipe = inputs["pipe"]
    spec = swap_scheduler(pipe.scheduler, "EulerDiscreteScheduler")
    shown: list[Any] = []

    def run(steps: int) -> Any:
        ctx = RunContext("5", "Denoise", Folders.from_env(), previews=PreviewPolicy(1),
                         emit=lambda kind, data: shown.append(data["preview"]))
        token = activate(ctx)
        try:
            return denoise(pipe.unet, spec, inputs["positive"], inputs["latents"],
                           inputs["negative"], steps=steps, guidance_scale=5.0)
        finally:
            deactivate(token)

    assert_no_per_step_syncs(pipe.unet.model, run)
    assert shown[-1] is not None  # the last step's preview was made


@pytest.fixture(scope="module")
def ksampler_inputs() -> dict[str, Any]:
    from nodes.comfyui import latent as latent_nodes
    from nodes.comfyui.conditioning import clip_text_encode
    from nodes.comfyui.loaders import checkpoint_loader_simple

    ckpt = checkpoint_loader_simple("noodle-tiny")
    return {"ckpt": ckpt, "positive": clip_text_encode("a red circle", clip=ckpt.CLIP),
            "negative": clip_text_encode("", clip=ckpt.CLIP),
            "latent": latent_nodes.empty_latent_image(SIZE, SIZE, 1)}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_ksampler_reads_nothing_back_per_step(ksampler_inputs: dict[str, Any],
                                             sampler: str) -> None:
    from nodes.comfyui.sampling import ksampler_node

    inputs = ksampler_inputs
    model = inputs["ckpt"].MODEL

    def run(steps: int) -> Any:
        return ksampler_node(model, 3, steps, 5.0, sampler, "karras",
                             positive=inputs["positive"], negative=inputs["negative"],
                             latent_image=inputs["latent"])

    assert_no_per_step_syncs(model.unet.model, run)


def test_the_counter_sees_a_read_per_step() -> None:
    """The counter itself: a loop that branches on a tensor each step is caught."""
    net = torch.nn.Linear(2, 2)

    def run(steps: int) -> None:
        x = torch.ones(1, 2)
        for _ in range(steps):
            x = net(x)
            if x.sum() > 1e9:  # a read of the result, as `if sigma_next == 0` was
                break

    counter_4, counter_8 = _counted(net, run, 4), _counted(net, run, 8)
    assert growth(counter_4, counter_8), "a per-step bool(tensor) went unseen"
