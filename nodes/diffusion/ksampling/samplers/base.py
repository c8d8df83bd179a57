"""What every sampler shares: the denoiser it calls, its signature, and a few step helpers.

A sampler integrates from ``sigmas[0]`` down to ``sigmas[-1]`` (usually 0), calling the
denoiser D(x; sigma) -> x_0 estimate once or more per step. Arithmetic is kept in the order
ComfyUI's samplers use, in float32 0-d tensors, so results agree to float rounding.

The schedule lives on x's device; a sampler reads it back once (`levels`) and takes every
branch (does this step end at 0? add noise?) on those host floats, never on a device value,
so no step waits for the device to finish the work queued before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from ..model_sampling import DiscreteSampling

# callback(step_index, x, denoised): once per step, for previews, progress and interrupts.
StepCallback = Callable[[int, Tensor, Tensor], None]


class Denoiser(Protocol):
    """The model as samplers see it: x at noise level sigma (one per batch item) -> x_0."""

    model_sampling: DiscreteSampling

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor: ...


class SamplerFn(Protocol):
    """One sampling algorithm over a given sigma schedule; returns the final x."""

    def __call__(
        self,
        model: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        seed: int,
        callback: StepCallback | None = None,
    ) -> Tensor: ...


def levels(sigmas: Tensor) -> list[float]:
    """The schedule as host floats (exactly its float32 values), read once per run."""
    return sigmas.tolist()


def lands_on_zero(sigmas: list[float], eta: float) -> list[bool]:
    """For each step of an ancestral sampler, whether its deterministic part ends exactly
    at sigma_down == 0: decided on the host from the same float32 arithmetic the step does."""
    host = torch.tensor(sigmas, dtype=torch.float32)
    return [bool(ancestral_step(host[i], host[i + 1], eta)[0] == 0)
            for i in range(len(sigmas) - 1)]


def per_item(sigma: Tensor, x: Tensor) -> Tensor:
    """A 0-d sigma repeated for every batch item, as the denoiser takes it."""
    return sigma * x.new_ones([x.shape[0]])


def derivative(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """dx/dsigma of the probability-flow ODE (Karras et al. 2022, eq. 3 with sigma(t) = t)."""
    return (x - denoised) / sigma


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Split a step sigma -> sigma_next into a deterministic step down to ``sigma_down`` and
    fresh noise of std ``sigma_up``, with sigma_down^2 + sigma_up^2 = sigma_next^2.

    ``eta`` scales the fresh noise: 1 is ancestral (DDPM-like) sampling, 0 deterministic.
    """
    if not eta:
        return sigma_next, sigma_next * 0
    variance = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
    # `torch.minimum`, not `min`: the same value without reading the comparison back.
    sigma_up = torch.minimum(sigma_next, eta * variance**0.5)
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def notify(callback: StepCallback | None, i: int, x: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback(i, x, denoised)


def denoise_at(model: Denoiser, x: Tensor, sigma: Tensor, i: int,
               callback: StepCallback | None) -> Tensor:
    """Step i's model call: the denoised estimate of x at sigma, reported to the callback
    (the one call per step every sampler makes before its own update)."""
    denoised = model(x, per_item(sigma, x))
    notify(callback, i, x, denoised)
    return denoised
