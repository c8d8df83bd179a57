"""The two families of sigma-indexed schedulers: k-diffusion samplers and ODE solvers.

They differ in how a sample relates to its noise level: the k-diffusion samplers work on
x = x_0 + sigma * noise (variance exploding) and scale the model input to unit variance; the
solvers work on the variance-preserving x = alpha_t x_0 + sigma_t noise directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import TRAINING_DEFAULTS, IndexedScheduler
from .schedule import alpha_sigma_from_sigma, interpolate_sigmas, sigma_timesteps, train_sigmas

# The config keys every solver starts with, after the training schedule (diffusers' order).
SOLVER_DEFAULTS: dict[str, Any] = {
    **TRAINING_DEFAULTS,
    "solver_order": 2,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
}


class SigmaScheduler(IndexedScheduler):
    """Base of the k-diffusion samplers (Euler, Heun, LMS, KDPM2): x_t = x_0 + sigma * noise.

    The model sees the sample scaled to unit variance, ``x / sqrt(sigma^2 + 1)``.
    """

    floor_terminal_alpha = True

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def _input_sigma(self) -> torch.Tensor:
        return self.sigmas[self.step_index]

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self._input_sigma()
        return sample / (sigma**2 + 1) ** 0.5

    def _denoised(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        sigma: torch.Tensor,
        allow_sample: bool = True,
    ) -> torch.Tensor:
        """x_0 from the model output, for each prediction type."""
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            return sample - sigma * model_output
        if prediction == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        if prediction == "sample" and allow_sample:
            return model_output
        raise ValueError(
            f"prediction_type {prediction!r} is not supported by {type(self).__name__}"
        )

    def _interpolate_sigmas(self, timesteps: np.ndarray, sigmas: np.ndarray, n: int) -> np.ndarray:
        """The training sigmas read off at the grid's timesteps (Euler also offers log-linear)."""
        return interpolate_sigmas(timesteps, sigmas)

    def _sigma_grid(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """The n-step sigmas and timesteps all k-diffusion samplers start from.

        Returns (sigmas, timesteps, training log sigmas, respaced); respaced grids (Karras...)
        come with timesteps mapped back from their sigmas.
        """
        timesteps = sigma_timesteps(self.config, n)
        sigmas = train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(sigmas)
        sigmas = self._interpolate_sigmas(timesteps, sigmas, n)
        sigmas, respaced = self._reshape_sigmas(sigmas, log_sigmas, n)
        if respaced is None:
            return sigmas, timesteps, log_sigmas, False
        return sigmas, respaced, log_sigmas, True

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        return original + noise * self._sigmas_at(original, timesteps)


class SolverScheduler(IndexedScheduler):
    """Base of the exponential-integrator solvers (DPM-Solver, DEIS, UniPC) on the VP process."""

    unknown_timestep_is_last = True
    floor_terminal_alpha = True
    init_noise_sigma = 1.0

    def _reject_unsupported(self) -> None:
        for key in ("use_flow_sigmas", "use_dynamic_shifting"):
            if self.config.get(key):
                raise ValueError(f"{key} (flow-matching models) is not supported by Noodle")
        if self.config.prediction_type == "flow_prediction":
            raise ValueError("prediction_type 'flow_prediction' is not supported by Noodle")

    def _start_step(self, timestep: Any) -> None:
        """Every solver step needs a laid-out schedule and a placed step counter."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self.step_index is None:
            self._init_step_index(timestep)

    def _alpha_sigma(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return alpha_sigma_from_sigma(self.sigmas[index])

    def _alpha_sigma_lambda(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """alpha_t, sigma_t and the half log-SNR lambda_t = log(alpha_t / sigma_t) at a step."""
        alpha_t, sigma_t = alpha_sigma_from_sigma(self.sigmas[index])
        return alpha_t, sigma_t, torch.log(alpha_t) - torch.log(sigma_t)

    def _round_karras_timesteps(self) -> bool:
        return True

    def _spaced_sigmas(self, timesteps: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Sigmas for the grid: interpolated at ``timesteps``, or respaced (Karras...).

        Returns (sigmas, timesteps, respaced); respaced sigmas come with their own timesteps.
        """
        sigmas = train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(sigmas)
        respaced, new_timesteps = self._reshape_sigmas(np.flip(sigmas).copy(), log_sigmas, n)
        if new_timesteps is None:
            return interpolate_sigmas(timesteps, sigmas), timesteps, False
        if self.config.use_karras_sigmas and self._round_karras_timesteps():
            new_timesteps = new_timesteps.round()
        return respaced, new_timesteps, True

    def _reset_history(self) -> None:
        """Forget past model outputs: a new schedule starts from first order again."""
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._reset_step_index()

    def _x0_from_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The data prediction x_0 for the current step, from any prediction type."""
        alpha_t, sigma_t = self._alpha_sigma(self.step_index)
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            return (sample - sigma_t * model_output) / alpha_t
        if prediction == "sample":
            return model_output
        if prediction == "v_prediction":
            return alpha_t * sample - sigma_t * model_output
        raise ValueError(
            f"prediction_type {prediction!r} is not supported by {type(self).__name__}"
        )

    def _eps_from_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The noise prediction epsilon for the current step, from any prediction type."""
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            return model_output
        alpha_t, sigma_t = self._alpha_sigma(self.step_index)
        if prediction == "sample":
            return (sample - alpha_t * model_output) / sigma_t
        if prediction == "v_prediction":
            return alpha_t * model_output + sigma_t * sample
        raise ValueError(
            f"prediction_type {prediction!r} is not supported by {type(self).__name__}"
        )

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        alpha_t, sigma_t = alpha_sigma_from_sigma(self._sigmas_at(original, timesteps))
        return alpha_t * original + sigma_t * noise
