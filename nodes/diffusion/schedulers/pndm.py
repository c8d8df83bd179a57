"""PNDM (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds").

A linear multistep method (PLMS, eq. 12) on the DDIM transfer step (eq. 11). Without
``skip_prk_steps`` it first takes three pseudo Runge-Kutta steps (four model calls each, on
half steps) to build its history; Stable Diffusion ships with ``skip_prk_steps=True``, which
starts PLMS directly with a second-order warm-up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Scheduler, SchedulerOutput
from .schedule import discrete_timesteps


class PNDMScheduler(Scheduler):
    defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }
    init_noise_sigma = 1.0
    pndm_order = 4

    def _setup(self) -> None:
        self.final_alpha_cumprod = (
            torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        )
        self.timesteps: torch.Tensor | None = None
        self.prk_timesteps: np.ndarray | None = None
        self.plms_timesteps: np.ndarray | None = None
        self._reset_history()

    def _reset_history(self) -> None:
        self.ets: list[torch.Tensor] = []  # past model outputs, newest last
        self.counter = 0
        self.cur_model_output: Any = 0
        self.cur_sample: torch.Tensor | None = None

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        self.num_inference_steps = num_inference_steps
        ascending = discrete_timesteps(self.config, num_inference_steps)[::-1].copy()
        if self.config.skip_prk_steps:
            # The second-to-last step is repeated: PLMS's warm-up evaluates it twice.
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate(
                [ascending[:-1], ascending[-2:-1], ascending[-1:]]
            )[::-1].copy()
        else:
            half = self.config.num_train_timesteps // num_inference_steps // 2
            prk = np.array(ascending[-self.pndm_order :]).repeat(2) + np.tile(
                np.array([0, half]), self.pndm_order
            )
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = ascending[:-3][::-1].copy()
        timesteps = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._reset_history()

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None
    ) -> SchedulerOutput:
        """Deterministic; ``generator`` is accepted for a uniform interface and ignored."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self._step_prk(model_output, timestep, sample)
        return self._step_plms(model_output, timestep, sample)

    def _step_prk(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor
    ) -> SchedulerOutput:
        """One of the four evaluations of a pseudo Runge-Kutta step (weights 1/6, 1/3, 1/3, 1/6)."""
        half = self.config.num_train_timesteps // self.num_inference_steps // 2
        prev_timestep = timestep - (0 if self.counter % 2 else half)
        timestep = self.prk_timesteps[self.counter // 4 * 4]
        stage = self.counter % 4
        if stage == 0:
            self.cur_model_output += 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output += 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._transfer(cur_sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev_sample)

    def _step_plms(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor
    ) -> SchedulerOutput:
        """Adams-Bashforth style combination of up to four past noise predictions."""
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError("PLMS steps need the three pseudo Runge-Kutta steps to run first")
        stride = self.config.num_train_timesteps // self.num_inference_steps
        prev_timestep = timestep - stride
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            # Second call of the warm-up: re-evaluate the first step with the averaged slope.
            prev_timestep = timestep
            timestep = timestep + stride

        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = 1 / 24 * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        prev_sample = self._transfer(sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return SchedulerOutput(prev_sample=prev_sample)

    def _transfer(
        self, sample: torch.Tensor, timestep: Any, prev_timestep: Any, model_output: torch.Tensor
    ) -> torch.Tensor:
        """The transfer function phi of eq. 11: move x_t to x_{t-delta} given the noise."""
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = (
            self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        )
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        prediction = self.config.prediction_type
        if prediction == "v_prediction":
            model_output = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        elif prediction != "epsilon":
            raise ValueError(f"prediction_type {prediction!r} must be epsilon or v_prediction")
        sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** 0.5
        denominator = (
            alpha_prod_t * beta_prod_t_prev**0.5
            + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** 0.5
        )
        return (
            sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denominator
        )

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        return self._add_noise_by_alphas_cumprod(original, noise, timesteps)
