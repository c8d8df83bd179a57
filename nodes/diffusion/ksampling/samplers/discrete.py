"""Samplers that step the way the discrete-time models were trained: DDPM and LCM.

DDPM (Ho et al. 2020) takes the posterior mean of x_{t-1} given x_t and the predicted noise,
plus the posterior's noise, in the variance-preserving form; here each step converts x from
sigma form (x = x_0 + sigma * eps) to that form and back. LCM (Luo et al. 2023) jumps to the
denoised estimate each step and re-noises it to the next sigma, which suits consistency-
distilled models.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..noise import NoiseSampler, generator_noise
from .base import Denoiser, StepCallback, denoise_at, levels


def _ddpm_step(
    x: Tensor, sigma: Tensor, sigma_prev: Tensor, eps: Tensor, noise: NoiseSampler,
    noisy: bool
) -> Tensor:
    """One ancestral DDPM step of the variance-preserving x from sigma to sigma_prev (with
    the posterior's noise when `noisy`: sigma_prev > 0, known on the host)."""
    alpha_bar = 1 / ((sigma * sigma) + 1)
    alpha_bar_prev = 1 / ((sigma_prev * sigma_prev) + 1)
    alpha = alpha_bar / alpha_bar_prev
    mean = (1.0 / alpha).sqrt() * (x - (1 - alpha) * eps / (1 - alpha_bar).sqrt())
    if noisy:
        variance = (1 - alpha) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        mean = mean + variance.sqrt() * noise(sigma, sigma_prev)
    return mean


@torch.no_grad()
def sample_ddpm(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, seed: int, callback: StepCallback | None = None
) -> Tensor:
    """Ancestral DDPM sampling over the given sigmas."""
    noise = generator_noise(x, seed)
    host = levels(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        x_vp = x / torch.sqrt(1.0 + sigma**2.0)
        x = _ddpm_step(x_vp, sigma, sigma_next, (x - denoised) / sigma, noise, host[i + 1] > 0)
        if host[i + 1] != 0:
            x = x * torch.sqrt(1.0 + sigma_next**2.0)
    return x


@torch.no_grad()
def sample_lcm(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, seed: int, callback: StepCallback | None = None
) -> Tensor:
    """Latent-consistency sampling: denoise fully, then add fresh noise at the next sigma."""
    noise = generator_noise(x, seed)
    host = levels(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        x = denoised
        if host[i + 1] > 0:
            x = model.model_sampling.noise_scaling(sigma_next, noise(sigma, sigma_next), x)
    return x
