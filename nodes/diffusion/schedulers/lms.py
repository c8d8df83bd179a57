"""Linear multistep (LMS) sampler of k-diffusion (Karras et al. 2022 setting).

Integrates the probability-flow ODE dx/dsigma = (x - x_0) / sigma with an Adams-Bashforth
rule of up to fourth order in sigma: the past derivatives are weighted by integrals of their
Lagrange basis polynomials over the next sigma interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import SIGMA_SPACING_DEFAULTS, TRAINING_DEFAULTS, SchedulerOutput
from .families import SigmaScheduler


def lagrange_integral(nodes: list[float], j: int, lower: float, upper: float) -> float:
    """Integral over [lower, upper] of the Lagrange basis polynomial of ``nodes[j]``.

    The integrand is a polynomial of degree len(nodes) - 1, so Gauss-Legendre quadrature with
    len(nodes) points is exact (no scipy needed).
    """
    points, weights = np.polynomial.legendre.leggauss(max(len(nodes), 1))
    half, mid = (upper - lower) / 2, (upper + lower) / 2
    tau = half * points + mid
    basis = np.ones_like(tau)
    for k, node in enumerate(nodes):
        if k != j:
            basis *= (tau - node) / (nodes[j] - node)
    return float(half * np.sum(weights * basis))


class LMSDiscreteScheduler(SigmaScheduler):
    defaults = {
        **TRAINING_DEFAULTS,
        **SIGMA_SPACING_DEFAULTS,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        self.num_inference_steps = num_inference_steps
        self.sigmas, timesteps, _, _ = self._sigma_grid(num_inference_steps)
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.float32)
        self._reset_step_index()
        self.derivatives: list[torch.Tensor] = []

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """Weight of the derivative taken ``current_order`` steps ago, for step ``t``."""
        sigmas = self._host(self.sigmas)
        nodes = [sigmas[t - k] for k in range(order)]
        return lagrange_integral(nodes, current_order, sigmas[t], sigmas[t + 1])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        order: int = 4,
        generator: Any = None,
    ) -> SchedulerOutput:
        """Deterministic; ``generator`` is accepted for a uniform interface and ignored."""
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        pred_x0 = self._denoised(model_output, sample, sigma)

        self.derivatives.append((sample - pred_x0) / sigma)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        order = min(self.step_index + 1, order)
        coeffs = [self.get_lms_coefficient(order, self.step_index, j) for j in range(order)]
        prev_sample = sample + sum(
            coeff * derivative
            for coeff, derivative in zip(coeffs, reversed(self.derivatives), strict=False)
        )
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)
