"""DPM-Solver-2 in k-diffusion's form ("KDPM2"), plain and ancestral. Two model calls per step.

Each step first takes an Euler step to the geometric midpoint of the two sigmas, calls the
model there, and then steps the whole interval from the saved start with the midpoint slope
(Karras et al. 2022, appendix; Lu et al. 2022, DPM-Solver-2). The timestep table interleaves
the midpoints with the step starts, and ``step`` alternates between the two halves.
The ancestral variant lands below the next sigma (sigma_down) and adds fresh noise (sigma_up).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .base import SIGMA_SPACING_DEFAULTS, TRAINING_DEFAULTS, NoiseGenerator, SchedulerOutput
from .families import SigmaScheduler
from .schedule import randn, sigmas_to_timesteps_float32


def _doubled(values: torch.Tensor) -> torch.Tensor:
    """Every entry after the first twice, and the last once more: one per model call."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


class _KDPM2Base(SigmaScheduler):
    """Both variants: the tables (step sigmas, midpoint sigmas, interleaved timesteps) and the
    two-call step, which the ancestral variant ends below the next sigma, adding noise."""

    defaults = {
        **TRAINING_DEFAULTS,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        **SIGMA_SPACING_DEFAULTS,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }
    order = 2
    ancestral: ClassVar[bool] = False
    # Where a step's midpoint sits in the midpoint table, relative to its own sigma's entry:
    # plain entry k lies between sigmas k-1 and k (so the next entry), ancestral entry k
    # between sigma k and where its step lands (the same entry).
    midpoint_shift: ClassVar[int] = 1

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        self.num_inference_steps = num_inference_steps
        sigmas, timesteps, log_sigmas, respaced = self._sigma_grid(num_inference_steps)
        if respaced and self.config.use_karras_sigmas:
            timesteps = timesteps.round()
        self.log_sigmas = torch.from_numpy(log_sigmas).to(device)
        sigmas = sigmas.to(device)

        if self.ancestral:
            sigmas_next = sigmas.roll(-1)
            sigmas_next[-1] = 0.0
            sigmas_up = (sigmas_next**2 * (sigmas**2 - sigmas_next**2) / sigmas**2) ** 0.5
            sigmas_down = (sigmas_next**2 - sigmas_up**2) ** 0.5
            sigmas_down[-1] = 0.0
            # Midpoint (in log sigma) between each sigma and where its step lands.
            sigmas_interpol = sigmas.log().lerp(sigmas_down.log(), 0.5).exp()
            sigmas_interpol[-2:] = 0.0
            self.sigmas_up = _doubled(sigmas_up)
            self.sigmas_down = _doubled(sigmas_down)
        else:
            sigmas_interpol = sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()
        self.sigmas = _doubled(sigmas)
        self.sigmas_interpol = _doubled(sigmas_interpol)

        timesteps = torch.from_numpy(timesteps).to(device)
        midpoint_t = sigmas_to_timesteps_float32(sigmas_interpol.cpu(), self.log_sigmas.cpu())
        midpoint_t = torch.from_numpy(midpoint_t).to(device, dtype=timesteps.dtype)
        midpoints = midpoint_t[:-2] if self.ancestral else midpoint_t[1:-1]
        interleaved = torch.stack((midpoints[:, None], timesteps[1:, None]), dim=-1).flatten()
        self.timesteps = torch.cat([timesteps[:1], interleaved])
        self.sample: torch.Tensor | None = None
        self._reset_step_index()
        self.sigmas = self.sigmas.to("cpu")

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` call is the first (start-of-step) model call."""
        return self.sample is None

    def _input_sigma(self) -> torch.Tensor:
        if self.state_in_first_order:
            return self.sigmas[self.step_index]
        return self.sigmas_interpol[self.step_index - 1 + self.midpoint_shift]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: NoiseGenerator = None,
    ) -> SchedulerOutput:
        """The ancestral variant draws its noise from ``generator``; plain KDPM2 ignores it."""
        if self.step_index is None:
            self._init_step_index(timestep)
        first = self.state_in_first_order
        start = self.step_index if first else self.step_index - 1  # the table entry of the step
        sigma = self.sigmas[start]
        sigma_interpol = self.sigmas_interpol[start + self.midpoint_shift]
        sigma_hat = sigma * (0 + 1)  # no churn

        pred_x0 = self._denoised(
            model_output, sample, sigma_hat if first else sigma_interpol, allow_sample=False
        )
        if first:
            # Euler step to the midpoint; the model is called there next.
            derivative = (sample - pred_x0) / sigma_hat
            dt = sigma_interpol - sigma_hat
            self.sample = sample
            if self.ancestral:
                self.dt = dt
            prev_sample = sample + derivative * dt
        else:
            # Full step from the saved start with the midpoint's slope: to the next sigma, or
            # (ancestral) down to sigma_down and back up to the next sigma with fresh noise.
            derivative = (sample - pred_x0) / sigma_interpol
            sigma_end = self.sigmas_down[start] if self.ancestral else self.sigmas[start + 1]
            dt = sigma_end - sigma_hat
            prev_sample = self.sample + derivative * dt
            self.sample = None
            if self.ancestral:
                noise = randn(
                    model_output.shape, generator, model_output.device, model_output.dtype
                )
                prev_sample = prev_sample + noise * self.sigmas_up[start]
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)


class KDPM2DiscreteScheduler(_KDPM2Base):
    pass


class KDPM2AncestralDiscreteScheduler(_KDPM2Base):
    ancestral = True
    midpoint_shift = 0
