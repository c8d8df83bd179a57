"""Heun's method (Karras et al. 2022, algorithm 1): a second-order ODE step, two model calls.

Each step is an Euler predictor to the next sigma, then a corrector that averages the slope
there with the first one. The model is called at both ends, so the timestep table holds every
inner timestep twice and ``step`` alternates between the two halves (``state_in_first_order``).
The last step (to sigma 0) is a plain Euler step, so n steps cost 2n - 1 model calls.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import SIGMA_SPACING_DEFAULTS, TRAINING_DEFAULTS, SchedulerOutput
from .families import SigmaScheduler


class HeunDiscreteScheduler(SigmaScheduler):
    defaults = {
        **TRAINING_DEFAULTS,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "epsilon",
        **SIGMA_SPACING_DEFAULTS,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }
    beta_schedules = ("linear", "scaled_linear", "squaredcos_cap_v2", "exp")
    order = 2

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        self.num_inference_steps = num_inference_steps
        sigmas, timesteps, _, _ = self._sigma_grid(num_inference_steps)
        # Every inner sigma/timestep twice: the end of one step is the start of the next.
        self.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        timesteps = torch.from_numpy(timesteps)
        timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
        self.timesteps = timesteps.to(device=device, dtype=torch.float32)
        self.prev_derivative: torch.Tensor | None = None
        self.dt: torch.Tensor | None = None
        self.sample: torch.Tensor | None = None
        self._reset_step_index()

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` call is a predictor (first model call of a step)."""
        return self.dt is None

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None
    ) -> SchedulerOutput:
        """Deterministic; ``generator`` is accepted for a uniform interface and ignored."""
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.state_in_first_order:
            sigma = self.sigmas[self.step_index]
            sigma_next = self.sigmas[self.step_index + 1]
        else:
            sigma = self.sigmas[self.step_index - 1]
            sigma_next = self.sigmas[self.step_index]
        sigma_hat = sigma * (0 + 1)  # no churn

        sigma_input = sigma_hat if self.state_in_first_order else sigma_next
        pred_x0 = self._denoised(model_output, sample, sigma_input)
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            pred_x0 = pred_x0.clamp(-limit, limit)

        if self.state_in_first_order:
            # Predictor: remember the slope and step size, take an Euler step.
            derivative = (sample - pred_x0) / sigma_hat
            dt = sigma_next - sigma_hat
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
        else:
            # Corrector: average the two slopes and redo the step from the saved start.
            derivative = (sample - pred_x0) / sigma_next
            derivative = (self.prev_derivative + derivative) / 2
            dt, sample = self.dt, self.sample
            self.prev_derivative = self.dt = self.sample = None

        prev_sample = sample + derivative * dt
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)
