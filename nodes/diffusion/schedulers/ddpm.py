"""DDPM ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models").

Each step samples from the Gaussian posterior q(x_{t-1} | x_t, x_0) (eq. 6-7) with x_0
predicted by the model, so it is stochastic: pass a generator for reproducible results.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import (
    TRAINING_DEFAULTS,
    X0_CLIPPING_DEFAULTS,
    NoiseGenerator,
    Scheduler,
    SchedulerOutput,
)
from .schedule import discrete_timesteps, randn


class DDPMScheduler(Scheduler):
    defaults = {
        **TRAINING_DEFAULTS,
        "variance_type": "fixed_small",
        "clip_sample": True,
        "prediction_type": "epsilon",
        **X0_CLIPPING_DEFAULTS,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }
    beta_schedules = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")
    init_noise_sigma = 1.0

    def _setup(self) -> None:
        self.one = torch.tensor(1.0)
        self.custom_timesteps = False
        total = self.config.num_train_timesteps
        self.timesteps = torch.arange(total - 1, -1, -1, dtype=torch.int64)
        self.variance_type = self.config.variance_type

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Either an evenly spaced schedule of n steps or explicit descending timesteps."""
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass either num_inference_steps or timesteps, not both")
        total = self.config.num_train_timesteps
        if timesteps is not None:
            if any(b >= a for a, b in zip(timesteps, timesteps[1:], strict=False)):
                raise ValueError("custom timesteps must be in descending order")
            if timesteps[0] >= total:
                raise ValueError(f"timesteps must start below num_train_timesteps ({total})")
            schedule = torch.tensor(timesteps, dtype=torch.int64)
            self.custom_timesteps = True
        else:
            if num_inference_steps > total:
                raise ValueError(
                    f"num_inference_steps ({num_inference_steps}) cannot exceed the "
                    f"{total} training timesteps"
                )
            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False
            schedule = torch.from_numpy(discrete_timesteps(self.config, num_inference_steps))
        self.timesteps = schedule.to(device)
        self._host_timesteps: list[int] = schedule.tolist()

    def previous_timestep(self, timestep: Any) -> Any:
        if (self.custom_timesteps or self.num_inference_steps) and isinstance(timestep, int):
            # A host timestep (the denoising loop's) is looked up on the host.
            host = self._host_timesteps
            index = host.index(timestep)
            return -1 if index == len(host) - 1 else host[index + 1]
        if self.custom_timesteps or self.num_inference_steps:
            index = (self.timesteps == timestep).nonzero(as_tuple=True)[0][0]
            if index == self.timesteps.shape[0] - 1:
                return torch.tensor(-1)
            return self.timesteps[index + 1]
        return timestep - 1

    def _variance(self, t: Any, predicted_variance: torch.Tensor | None) -> torch.Tensor:
        """Posterior variance (eq. 7), or its log / learned interpolation, per variance_type."""
        prev_t = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t
        variance = torch.clamp(variance, min=1e-20)
        kind = self.config.variance_type
        if kind == "fixed_small_log":
            return torch.exp(0.5 * torch.log(variance))
        if kind == "fixed_large":
            return current_beta_t
        if kind == "fixed_large_log":
            return torch.log(current_beta_t)
        if kind == "learned":
            return predicted_variance
        if kind == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * torch.log(current_beta_t) + (1 - frac) * torch.log(variance)
        return variance

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: NoiseGenerator = None,
    ) -> SchedulerOutput:
        t = timestep
        prev_t = self.previous_timestep(t)
        predicted_variance = None
        learned = self.variance_type in ("learned", "learned_range")
        if model_output.shape[1] == sample.shape[1] * 2 and learned:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)

        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        pred_x0 = self._clip_x0(self._x0_from_alpha_prod(model_output, sample, alpha_prod_t))

        # Posterior mean (eq. 7): a blend of the predicted x_0 and the current sample.
        x0_coeff = alpha_prod_t_prev**0.5 * current_beta_t / beta_prod_t
        sample_coeff = current_alpha_t**0.5 * beta_prod_t_prev / beta_prod_t
        prev_sample = x0_coeff * pred_x0 + sample_coeff * sample

        if t > 0:
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            variance = self._variance(t, predicted_variance)
            if self.variance_type == "fixed_small_log":
                prev_sample = prev_sample + variance * noise
            elif self.variance_type == "learned_range":
                prev_sample = prev_sample + torch.exp(0.5 * variance) * noise
            else:
                prev_sample = prev_sample + variance**0.5 * noise
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        return self._add_noise_by_alphas_cumprod(original, noise, timesteps)
