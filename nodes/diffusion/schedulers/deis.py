"""DEIS multistep (Zhang & Chen 2022, "Fast Sampling of Diffusion Models with Exponential
Integrator"), the log-rho variant. One model call per step.

Integrates the noise prediction exactly in rho = sigma/alpha after fitting it with a
Lagrange polynomial through the last one to three predictions in log rho; the weights are
closed-form integrals of those polynomials (``ind_fn``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import SIGMA_SPACING_DEFAULTS, SchedulerOutput
from .families import SOLVER_DEFAULTS, SolverScheduler
from .schedule import solver_timesteps


def log(x: torch.Tensor) -> torch.Tensor:
    """Natural log in numpy's float32 arithmetic, which the reference coefficients use; the
    third-order weights are sensitive enough for torch's last-bit differences to show."""
    return torch.tensor(np.log(x.numpy()))


class DEISMultistepScheduler(SolverScheduler):
    defaults = {
        **SOLVER_DEFAULTS,
        "algorithm_type": "deis",
        "solver_type": "logrho",
        "lower_order_final": True,
        **SIGMA_SPACING_DEFAULTS,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }

    def _check_options(self) -> None:
        if self.config.algorithm_type in ("dpmsolver", "dpmsolver++"):
            self._update_config(algorithm_type="deis")
        elif self.config.algorithm_type != "deis":
            raise ValueError(f"algorithm_type {self.config.algorithm_type!r} is not 'deis'")
        if self.config.solver_type in ("midpoint", "heun", "bh1", "bh2"):
            self._update_config(solver_type="logrho")
        elif self.config.solver_type != "logrho":
            raise ValueError(f"solver_type {self.config.solver_type!r} is not 'logrho'")

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        timesteps = solver_timesteps(self.config, num_inference_steps)
        sigmas, timesteps, respaced = self._spaced_sigmas(timesteps, num_inference_steps)
        # DEIS always ends on the smallest sigma, never on 0.
        table = self._sigma_table(sigmas, "sigma_min", sigmas[-1] if respaced else None)
        self._set_schedule(table, timesteps, device)

    def convert_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """The noise prediction DEIS integrates, via x_0 so thresholding can apply."""
        alpha_t, sigma_t = self._alpha_sigma(self.step_index)
        x0_pred = self._thresholded(self._x0_from_output(model_output, sample))
        return (sample - alpha_t * x0_pred) / sigma_t

    def first_order_update(self, m0: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """DDIM, written as the exponential integrator in lambda."""
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.step_index + 1)
        alpha_s, _, lambda_s = self._alpha_sigma_lambda(self.step_index)
        h = lambda_t - lambda_s
        return alpha_t / alpha_s * sample - sigma_t * (torch.exp(h) - 1.0) * m0

    def second_order_update(self, sample: torch.Tensor) -> torch.Tensor:
        i = self.step_index
        alpha_t, sigma_t = self._alpha_sigma(i + 1)
        alpha_s0, sigma_s0 = self._alpha_sigma(i)
        alpha_s1, sigma_s1 = self._alpha_sigma(i - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        rho_t, rho_s0, rho_s1 = sigma_t / alpha_t, sigma_s0 / alpha_s0, sigma_s1 / alpha_s1

        # Integral of the Lagrange basis polynomial of node b (other node c) in log rho.
        def ind_fn(t: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return t * (-log(c) + log(t) - 1) / (log(b) - log(c))

        coef1 = ind_fn(rho_t, rho_s0, rho_s1) - ind_fn(rho_s0, rho_s0, rho_s1)
        coef2 = ind_fn(rho_t, rho_s1, rho_s0) - ind_fn(rho_s0, rho_s1, rho_s0)
        return alpha_t * (sample / alpha_s0 + coef1 * m0 + coef2 * m1)

    def third_order_update(self, sample: torch.Tensor) -> torch.Tensor:
        i = self.step_index
        alpha_t, sigma_t = self._alpha_sigma(i + 1)
        alpha_s0, sigma_s0 = self._alpha_sigma(i)
        alpha_s1, sigma_s1 = self._alpha_sigma(i - 1)
        alpha_s2, sigma_s2 = self._alpha_sigma(i - 2)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        rho_t, rho_s0 = sigma_t / alpha_t, sigma_s0 / alpha_s0
        rho_s1, rho_s2 = sigma_s1 / alpha_s1, sigma_s2 / alpha_s2

        # Integral of the Lagrange basis polynomial of node b (others c, d) in log rho.
        def ind_fn(
            t: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor
        ) -> torch.Tensor:
            numerator = t * (
                log(c) * (log(d) - log(t) + 1)
                - log(d) * log(t)
                + log(d)
                + log(t) ** 2
                - 2 * log(t)
                + 2
            )
            return numerator / ((log(b) - log(c)) * (log(b) - log(d)))

        coef1 = ind_fn(rho_t, rho_s0, rho_s1, rho_s2) - ind_fn(rho_s0, rho_s0, rho_s1, rho_s2)
        coef2 = ind_fn(rho_t, rho_s1, rho_s2, rho_s0) - ind_fn(rho_s0, rho_s1, rho_s2, rho_s0)
        coef3 = ind_fn(rho_t, rho_s2, rho_s0, rho_s1) - ind_fn(rho_s0, rho_s2, rho_s0, rho_s1)
        return alpha_t * (sample / alpha_s0 + coef1 * m0 + coef2 * m1 + coef3 * m2)

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None
    ) -> SchedulerOutput:
        """Deterministic; ``generator`` is accepted for a uniform interface and ignored."""
        self._start_step(timestep)
        model_output = self.convert_model_output(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [model_output]
        order = self._multistep_order()
        if order == 1:
            prev_sample = self.first_order_update(model_output, sample)
        elif order == 2:
            prev_sample = self.second_order_update(sample)
        else:
            prev_sample = self.third_order_update(sample)
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample)
