"""What every sampling node of the pack does around the sampler itself.

Before: an empty latent gets the model's channel count (ComfyUI's EmptyLatentImage always
makes 4), the latent moves to the UNet's device, a noise mask from SetLatentNoiseMask is
resized to the latent, and the guider becomes a denoiser. During: each step reports
progress (with a preview of the current estimate when the run wants one), which is also
where an interrupt stops the run. After: the result keeps the input latent's extras
(batch_index, noise_mask), and the last clean estimate is kept for the custom samplers'
`denoised_output`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from graph_runtime import current
from nodes.comfyui.guidance.denoiser import GuidedDenoiser
from nodes.comfyui.types import Guider, Model
from nodes.lazy import lazy_module
from nodes.previews import deferred_preview
from nodes.types import Latent

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")


def fit_channels(model: Model, samples: Tensor) -> Tensor:
    """An all-zero latent with another channel count becomes zeros of the model's count."""
    channels = model.latent_channels
    if samples.shape[1] != channels and not bool(samples.any()):
        shape = (samples.shape[0], channels, *samples.shape[2:])
        return torch.zeros(shape, dtype=samples.dtype, device=samples.device)
    return samples


def latent_mask(mask: Tensor | None, shape: torch.Size, device: torch.device
                ) -> Tensor | None:
    """A noise mask `[B?, 1?, H, W]` resized bilinearly to the latent and repeated over its
    channels and batch (1 = resample, 0 = keep)."""
    if mask is None:
        return None
    m = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    m = F.interpolate(m, size=tuple(shape[2:]), mode="bilinear")
    m = m.repeat(1, shape[1], 1, 1)
    if m.shape[0] < shape[0]:
        m = m.repeat(math.ceil(shape[0] / m.shape[0]), 1, 1, 1)
    return m[: shape[0]].to(device)


def steps_run(n_sigmas: int, start_step: int | None, last_step: int | None) -> int:
    """How many steps a run over `n_sigmas` sigmas cut to [start_step, last_step] takes."""
    n = max(n_sigmas - 1, 0)
    last = n if last_step is None else min(last_step, n)
    return max(last - (start_step or 0), 0)


class SamplingRun:
    """One sampling job: the prepared inputs, the denoiser and the per-step report."""

    def __init__(self, guider: Guider, latent: Latent, total_steps: int) -> None:
        model = guider.model
        self.latent = latent
        # Where the UNet will run: an offloaded (`--vram low`) UNet waits elsewhere until
        # its sampling loop starts, and the run's tensors must be where it runs.
        from nodes.offload import compute_device

        self.device = compute_device(model.unet.model)
        self.samples = fit_channels(model, latent.samples).to(self.device, torch.float32)
        self.mask = latent_mask(latent.extra.get("noise_mask"), self.samples.shape,
                                self.device)
        self.denoiser = GuidedDenoiser(guider, self.samples.shape, self.device)
        self.total = total_steps
        self.denoised: Tensor | None = None
        self.ctx = current()
        if self.ctx is not None:
            self.ctx.check_interrupt()

    def callback(self, i: int, x: Tensor, denoised: Tensor) -> None:
        """Every step: progress; a preview only when the run wants one for this step,
        rendered off the sampling thread (see `RunContext.progress`)."""
        self.denoised = denoised
        ctx = self.ctx
        if ctx is None:
            return
        step, total = min(i + 1, self.total), max(self.total, 1)
        preview = None
        if ctx.wants_preview(step, total):
            preview = deferred_preview(denoised, self.latent.extra.get("rgb_projection"),
                                       final=step >= total)
        ctx.progress(step, total, preview)

    def _latent(self, samples: Tensor) -> Latent:
        return Latent(samples, self.latent.seeds, None, noise=False,
                      extra=dict(self.latent.extra))

    def result(self, samples: Tensor) -> Latent:
        return self._latent(samples)

    def results(self, samples: Tensor) -> tuple[Latent, Latent]:
        """The sampled latent and the last clean estimate (the result itself when no step
        ran)."""
        out = self._latent(samples)
        if self.denoised is None:
            return out, out
        return out, self._latent(self.denoised.float())
