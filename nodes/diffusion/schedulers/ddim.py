"""DDIM (Song et al. 2020, "Denoising Diffusion Implicit Models"), eq. 12.

Deterministic for ``eta=0``: each step predicts x_0, then re-noises it to the previous
timestep along the predicted noise direction. ``eta=1`` adds DDPM's full posterior noise.
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


class DDIMScheduler(Scheduler):
    defaults = {
        **TRAINING_DEFAULTS,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        **X0_CLIPPING_DEFAULTS,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }
    init_noise_sigma = 1.0

    def _setup(self) -> None:
        # alpha_bar "before" the first training step: 1 (fully clean) or alpha_bar_0.
        self.final_alpha_cumprod = (
            torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        )
        total = self.config.num_train_timesteps
        self.timesteps = torch.arange(total - 1, -1, -1, dtype=torch.int64)

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        if num_inference_steps > self.config.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps ({num_inference_steps}) cannot exceed the "
                f"{self.config.num_train_timesteps} training timesteps"
            )
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(discrete_timesteps(self.config, num_inference_steps)).to(
            device
        )

    def _alpha_prod(self, t: Any) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: NoiseGenerator = None,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        prev_timestep = timestep - self.config.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self._alpha_prod(prev_timestep)
        beta_prod_t = 1 - alpha_prod_t

        # x_0 and epsilon from whatever the model predicts (epsilon before any clipping).
        pred_x0 = self._x0_from_alpha_prod(model_output, sample, alpha_prod_t)
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            pred_eps = model_output
        elif prediction == "sample":
            pred_eps = (sample - alpha_prod_t**0.5 * pred_x0) / beta_prod_t**0.5
        else:
            pred_eps = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        pred_x0 = self._clip_x0(pred_x0)

        # sigma_t of eq. 16, scaled by eta.
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        variance = beta_prod_t_prev / beta_prod_t * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance**0.5
        if use_clipped_model_output:
            pred_eps = (sample - alpha_prod_t**0.5 * pred_x0) / beta_prod_t**0.5

        direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * pred_eps
        prev_sample = alpha_prod_t_prev**0.5 * pred_x0 + direction
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            if variance_noise is None:
                variance_noise = randn(
                    model_output.shape, generator, model_output.device, model_output.dtype
                )
            prev_sample = prev_sample + std_dev_t * variance_noise
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        return self._add_noise_by_alphas_cumprod(original, noise, timesteps)
