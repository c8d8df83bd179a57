"""k-diffusion-style sampling with ComfyUI's numerics, in plain torch.

Our ``schedulers`` package reproduces diffusers: a scheduler object owns timesteps and is
stepped by a pipeline loop. ComfyUI, whose images our users compare with, samples the
k-diffusion way instead (Karras et al. 2022): the model is wrapped as a *denoiser*
D(x; sigma) -> x_0 over continuous noise levels, and each sampler is one short function that
integrates from ``sigmas[0]`` to ``sigmas[-1] = 0`` over a schedule computed separately. That
split is also ours: ``schedules`` computes sigmas, ``samplers`` integrates, ``ksampler``
strings them together the way ComfyUI's KSampler does.

Where ComfyUI's conventions differ from diffusers' (and so from ``schedulers``):

- x is in variance-exploding form, x = x_0 + sigma * noise; the network's input is scaled by
  1/sqrt(1 + sigma^2) inside the denoiser (``DiscreteSampling.calculate_input``), not by the
  sampler.
- The network is called with the nearest trained integer timestep to each sigma; diffusers'
  k-style schedulers pass fractional timesteps.
- The sigma table comes from float64 betas; schedules such as ``normal`` interpolate log sigma
  between table entries; ``simple``/``ddim_uniform``/``beta`` pick entries.
- Initial noise comes from one CPU generator for the whole batch (``prepare_noise``), and a
  run from the top of the schedule scales it by sqrt(1 + sigma_max^2).
- Ancestral samplers draw fresh noise from a generator on x's device seeded with the seed;
  SDE samplers use a seeded Brownian tree (``torchsde``), so a seed reproduces ComfyUI's image.
- Guidance is combined on the denoised estimates, and skipped (one model call) at cfg 1.
"""

from __future__ import annotations

from .cfg import cfg_combine, needs_uncond
from .ksampler import prepare_noise, sample, sample_custom, sampler_sigmas
from .model_sampling import DiscreteSampling
from .samplers import (
    DROP_PENULTIMATE_SIGMA,
    SAMPLER_NAMES,
    Denoiser,
    Sampler,
    SamplerFn,
    StepCallback,
    sampler_function,
)
from .schedules import SCHEDULER_NAMES, calculate_sigmas, exponential_sigmas, karras_sigmas

__all__ = [
    "DROP_PENULTIMATE_SIGMA",
    "SAMPLER_NAMES",
    "SCHEDULER_NAMES",
    "Denoiser",
    "DiscreteSampling",
    "Sampler",
    "SamplerFn",
    "StepCallback",
    "calculate_sigmas",
    "cfg_combine",
    "exponential_sigmas",
    "karras_sigmas",
    "needs_uncond",
    "prepare_noise",
    "sample",
    "sample_custom",
    "sampler_function",
    "sampler_sigmas",
]
