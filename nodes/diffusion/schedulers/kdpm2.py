"""DPM-Solver-2 in k-diffusion's form ("KDPM2"), plain and ancestral. Two model calls per step.

Each step first takes an Euler step to the geometric midpoint of the two sigmas, calls the
model there, and then steps the whole interval from the saved start with the midpoint slope
(Karras et al. 2022, appendix; Lu et al. 2022, DPM-Solver-2). The timestep table interleaves
the midpoints with the step starts, and ``step`` alternates between the two halves.
The ancestral variant lands below the next sigma (sigma_down) and adds fresh noise (sigma_up).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import SIGMA_SPACING_DEFAULTS, TRAINING_DEFAULTS, SchedulerOutput
from .families import SigmaScheduler
from .schedule import randn, sigmas_to_timesteps_float32


def _doubled(values: torch.Tensor) -> torch.Tensor:
    """Every entry after the first twice, and the last once more: one per model call."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


class _KDPM2Base(SigmaScheduler):
    """Shared table construction: step sigmas, midpoint sigmas, interleaved timesteps."""

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
    ancestral = False

    def _setup(self) -> None:
        self.set_timesteps(self.config.num_train_timesteps)

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        self.num_inference_steps = num_inference_steps
        sigmas, timesteps, log_sigmas, respaced = self._sigma_grid(num_inference_steps)
        if respaced and self.config.use_karras_sigmas:
            timesteps = timesteps.round()
        self.log_sigmas = torch.from_numpy(log_sigmas).to(device)
        sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)).to(device)

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


class KDPM2DiscreteScheduler(_KDPM2Base):
    def _input_sigma(self) -> torch.Tensor:
        if self.state_in_first_order:
            return self.sigmas[self.step_index]
        return self.sigmas_interpol[self.step_index]

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None
    ) -> SchedulerOutput:
        """Deterministic; ``generator`` is accepted for a uniform interface and ignored."""
        if self.step_index is None:
            self._init_step_index(timestep)
        first = self.state_in_first_order
        if first:
            sigma = self.sigmas[self.step_index]
            sigma_interpol = self.sigmas_interpol[self.step_index + 1]
            sigma_next = self.sigmas[self.step_index + 1]
        else:
            sigma = self.sigmas[self.step_index - 1]
            sigma_interpol = self.sigmas_interpol[self.step_index]
            sigma_next = self.sigmas[self.step_index]
        sigma_hat = sigma * (0 + 1)  # no churn

        pred_x0 = self._denoised(
            model_output, sample, sigma_hat if first else sigma_interpol, allow_sample=False
        )
        if first:
            # Euler step to the midpoint; the model is called there next.
            derivative = (sample - pred_x0) / sigma_hat
            dt = sigma_interpol - sigma_hat
            self.sample = sample
        else:
            # Full step from the saved start with the midpoint's slope.
            derivative = (sample - pred_x0) / sigma_interpol
            dt = sigma_next - sigma_hat
            sample = self.sample
            self.sample = None
        self._step_index += 1
        prev_sample = sample + derivative * dt
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)


class KDPM2AncestralDiscreteScheduler(_KDPM2Base):
    ancestral = True

    def _input_sigma(self) -> torch.Tensor:
        if self.state_in_first_order:
            return self.sigmas[self.step_index]
        return self.sigmas_interpol[self.step_index - 1]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> SchedulerOutput:
        if self.step_index is None:
            self._init_step_index(timestep)
        first = self.state_in_first_order
        if first:
            sigma = self.sigmas[self.step_index]
            sigma_interpol = self.sigmas_interpol[self.step_index]
            sigma_up = self.sigmas_up[self.step_index]
            sigma_down = self.sigmas_down[self.step_index - 1]
        else:
            sigma = self.sigmas[self.step_index - 1]
            sigma_interpol = self.sigmas_interpol[self.step_index - 1]
            sigma_up = self.sigmas_up[self.step_index - 1]
            sigma_down = self.sigmas_down[self.step_index - 1]
        sigma_hat = sigma * (0 + 1)  # no churn

        pred_x0 = self._denoised(
            model_output, sample, sigma_hat if first else sigma_interpol, allow_sample=False
        )
        if first:
            derivative = (sample - pred_x0) / sigma_hat
            dt = sigma_interpol - sigma_hat
            self.sample = sample
            self.dt = dt
            prev_sample = sample + derivative * dt
        else:
            derivative = (sample - pred_x0) / sigma_interpol
            dt = sigma_down - sigma_hat
            sample = self.sample
            self.sample = None
            prev_sample = sample + derivative * dt
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + noise * sigma_up
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)
