"""KSampler's semantics: which sigmas a run visits, which noise it starts from, and how a run
starts and ends. This is what makes a seed give ComfyUI's image.

- ``sampler_sigmas``: ``steps`` steps of the named schedule; ``denoise`` < 1 runs the last
  ``steps`` steps of a longer schedule (``int(steps / denoise)``), so img2img keeps the step
  count; some samplers get one step more with the second-lowest sigma dropped.
- ``prepare_noise``: float32 noise from one CPU generator seeded once for the whole batch,
  so the image does not depend on the device; ``batch_index`` picks items out of a longer
  stream (a latent cut from a batch keeps its noise).
- ``sample``: KSampler / KSamplerAdvanced (start and end steps, noise on or off, leftover
  noise kept or not). ``sample_custom``: the same over explicit sigmas and a sampler object,
  for the custom-sampling nodes.

Latents here are already in the model's space (multiplied by the VAE's scaling factor), so
unlike ComfyUI there is no ``process_latent_in``/``out`` around sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .model_sampling import DiscreteSampling
from .samplers import DROP_PENULTIMATE_SIGMA, Sampler, sampler_function
from .samplers.base import Denoiser, SamplerFn, StepCallback
from .schedules import calculate_sigmas


def sampler_sigmas(
    ms: DiscreteSampling, sampler: str, scheduler: str, steps: int, denoise: float = 1.0
) -> Tensor:
    """The sigmas KSampler runs for this sampler, schedule, step count and denoise strength."""

    def schedule(n: int) -> Tensor:
        if sampler in DROP_PENULTIMATE_SIGMA:
            sigmas = calculate_sigmas(ms, scheduler, n + 1)
            return torch.cat([sigmas[:-2], sigmas[-1:]])
        return calculate_sigmas(ms, scheduler, n)

    if denoise is None or denoise > 0.9999:
        return schedule(steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    return schedule(int(steps / denoise))[-(steps + 1) :]


def prepare_noise(latent: Tensor, seed: int, batch_index: Sequence[int] | None = None) -> Tensor:
    """Initial noise shaped like ``latent``: float32, on the CPU, one generator per batch.

    With ``batch_index``, item i gets the noise the i-th index would have had in a batch
    drawn in one go (draws are made one item at a time up to the largest index).
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    shape = tuple(latent.shape)
    if batch_index is None:
        return torch.randn(shape, dtype=torch.float32, generator=generator, device="cpu")
    wanted = set(batch_index)
    drawn: dict[int, Tensor] = {}
    for i in range(max(batch_index) + 1):
        item = torch.randn((1,) + shape[1:], dtype=torch.float32, generator=generator)
        if i in wanted:
            drawn[i] = item
    return torch.cat([drawn[i] for i in batch_index], dim=0)


def _starts_from_pure_noise(ms: DiscreteSampling, sigmas: Tensor) -> bool:
    """Whether sampling starts at (or above) the model's highest noise level."""
    top, first = float(ms.sigma_max), float(sigmas[0])
    return math.isclose(top, first, rel_tol=1e-05) or first > top


class _Masked:
    """A denoiser that keeps the unmasked region of the latent: outside the mask, x is
    replaced by the latent noised to the current sigma, and the estimate by the latent."""

    def __init__(self, inner: Denoiser, latent: Tensor, noise: Tensor, mask: Tensor) -> None:
        self.inner = inner
        self.model_sampling = inner.model_sampling
        self.latent, self.noise, self.mask = latent, noise, mask

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        keep = 1.0 - self.mask
        sigma_b = sigma.reshape([sigma.shape[0]] + [1] * (self.noise.ndim - 1))
        renoised = self.model_sampling.noise_scaling(sigma_b, self.noise, self.latent)
        x = x * self.mask + renoised * keep
        return self.inner(x, sigma) * self.mask + self.latent * keep


def sample_custom(
    model: Denoiser,
    noise: Tensor | None,
    latent: Tensor,
    sigmas: Tensor,
    sampler_fn: SamplerFn,
    seed: int,
    add_noise: bool = True,
    callback: StepCallback | None = None,
    *,
    denoise_mask: Tensor | None = None,
) -> Tensor:
    """Sample over explicit sigmas: noise the latent to ``sigmas[0]``, run the sampler, and
    return the float32 result on the latent's device.

    Without ``add_noise`` (or without ``noise``) the latent is used as is, e.g. to continue
    a run that returned with leftover noise. An empty schedule returns the latent. The last
    denoised estimate arrives through ``callback``. ``denoise_mask`` (1 = resample, 0 = keep;
    broadcastable to the latent) keeps the rest of the latent, as inpainting does.
    """
    if sigmas.shape[-1] == 0:
        return latent
    ms = model.model_sampling
    device = latent.device
    latent = latent.to(torch.float32)
    if noise is None or not add_noise:
        noise = torch.zeros_like(latent)
    noise = noise.to(device=device, dtype=torch.float32)
    sigmas = sigmas.to(device=device, dtype=torch.float32)
    if denoise_mask is not None:
        mask_noise = noise
        if isinstance(sampler_fn, Sampler) and sampler_fn.fresh_mask_noise:
            mask_noise = prepare_noise(latent, seed + 1).to(device)
        mask = denoise_mask.to(device=device, dtype=torch.float32)
        model = _Masked(model, latent, mask_noise, mask)
    x = ms.noise_scaling(sigmas[0], noise, latent, _starts_from_pure_noise(ms, sigmas))
    x = sampler_fn(model, x, sigmas, seed=seed, callback=callback)
    return ms.inverse_noise_scaling(sigmas[-1], x).to(torch.float32)


def sample(
    model: Denoiser,
    noise: Tensor,
    latent: Tensor,
    sigmas: Tensor,
    sampler: str,
    seed: int,
    *,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
    add_noise: bool = True,
    callback: StepCallback | None = None,
    denoise_mask: Tensor | None = None,
) -> Tensor:
    """KSampler / KSamplerAdvanced over ``sigmas`` (from ``sampler_sigmas``).

    ``last_step`` cuts the schedule after that step; then ``force_full_denoise`` makes the
    last sigma 0 (KSamplerAdvanced's return_with_leftover_noise off), otherwise the result
    keeps the noise of that level. ``start_step`` skips the first steps; at or past the end
    the latent comes back unchanged. ``add_noise=False`` starts from the latent as is.
    """
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return latent
        sigmas = sigmas[start_step:]
    return sample_custom(
        model,
        noise,
        latent,
        sigmas,
        sampler_function(sampler),
        seed,
        add_noise,
        callback,
        denoise_mask=denoise_mask,
    )
