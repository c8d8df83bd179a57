"""Euler and Euler-ancestral samplers (Karras et al. 2022, algorithm 2; k-diffusion).

Euler takes one explicit Euler step of the probability-flow ODE dx/dsigma = (x - x_0)/sigma per
model call. Euler-ancestral steps down further, to sigma_down, and then adds fresh noise of
std sigma_up so that the marginal noise level lands on the next sigma: stochastic, and its
images keep changing as the step count changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import SIGMA_SPACING_DEFAULTS, TRAINING_DEFAULTS, NoiseGenerator, SchedulerOutput
from .families import SigmaScheduler
from .schedule import interpolate_sigmas, randn, train_sigmas


def _reject_integer_timestep(timestep: Any) -> None:
    # A loop index passed by mistake would silently pick the wrong sigma.
    if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
        raise ValueError("pass one of scheduler.timesteps to step(), not an integer index")


class EulerDiscreteScheduler(SigmaScheduler):
    defaults = {
        **TRAINING_DEFAULTS,
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        **SIGMA_SPACING_DEFAULTS,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    }

    def _setup(self) -> None:
        total = self.config.num_train_timesteps
        sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).flip(0)
        timesteps = torch.from_numpy(np.linspace(0, total - 1, total)[::-1].copy()).float()
        if self._continuous_timesteps():
            timesteps = torch.Tensor([0.25 * sigma.log() for sigma in sigmas])
        self.timesteps = timesteps
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])

    def _continuous_timesteps(self) -> bool:
        """Models trained on continuous noise levels (e.g. SD upscalers) take 0.25 log sigma."""
        return (
            self.config.timestep_type == "continuous"
            and self.config.prediction_type == "v_prediction"
        )

    def _interpolate_sigmas(self, timesteps: np.ndarray, sigmas: np.ndarray, n: int) -> np.ndarray:
        if self.config.interpolation_type == "linear":
            return interpolate_sigmas(timesteps, sigmas)
        if self.config.interpolation_type == "log_linear":
            ends = (np.log(sigmas[-1]), np.log(sigmas[0]))
            return torch.linspace(*ends, n + 1).exp().numpy()
        raise ValueError("interpolation_type must be 'linear' or 'log_linear'")

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        self.num_inference_steps = num_inference_steps
        final = self.config.final_sigmas_type
        sigmas, timesteps, _, _ = self._sigma_grid(num_inference_steps, final)
        sigmas = sigmas.to(device=device)
        if self._continuous_timesteps():
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sigmas[:-1]]).to(device=device)
        else:
            self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device=device)
        self._reset_step_index()
        self.sigmas = sigmas.to("cpu")

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: NoiseGenerator = None,
    ) -> SchedulerOutput:
        """One Euler step; ``s_churn > 0`` first raises the noise level (Karras' churn)."""
        _reject_integer_timestep(timestep)
        if self.step_index is None:
            self._init_step_index(timestep)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[self.step_index]
        churn = s_tmin <= self._host(self.sigmas)[self.step_index] <= s_tmax
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if churn else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5

        prediction = self.config.prediction_type
        if prediction in ("sample", "original_sample"):
            pred_x0 = model_output
        elif prediction == "epsilon":
            pred_x0 = sample - sigma_hat * model_output
        else:
            pred_x0 = self._denoised(model_output, sample, sigma)

        derivative = (sample - pred_x0) / sigma_hat
        dt = self.sigmas[self.step_index + 1] - sigma_hat
        prev_sample = (sample + derivative * dt).to(model_output.dtype)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    defaults = {
        **TRAINING_DEFAULTS,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }

    def _setup(self) -> None:
        total = self.config.num_train_timesteps
        sigmas = train_sigmas(self.alphas_cumprod)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas[::-1], [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(np.linspace(0, total - 1, total)[::-1].copy())

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        self.num_inference_steps = num_inference_steps
        self.sigmas, timesteps, _, _ = self._sigma_grid(num_inference_steps)
        self.timesteps = torch.from_numpy(timesteps).to(device=device)
        self._reset_step_index()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: NoiseGenerator = None,
    ) -> SchedulerOutput:
        _reject_integer_timestep(timestep)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        sample = sample.to(torch.float32)
        pred_x0 = self._denoised(model_output, sample, sigma, allow_sample=False)

        # Split the move to the next sigma into a deterministic part and fresh noise.
        sigma_from, sigma_to = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5

        derivative = (sample - pred_x0) / sigma
        prev_sample = sample + derivative * (sigma_down - sigma)
        noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = (prev_sample + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)
