"""DPM-Solver and DPM-Solver++ multistep (Lu et al. 2022a, 2022b). One model call per step.

An exponential integrator in lambda = log(alpha/sigma): the linear part of the diffusion ODE
is solved exactly and the model's prediction is extrapolated from the last one to three steps
(orders 1-3). ``dpmsolver++`` works on the data prediction x_0 (stable with guidance, the
default); ``dpmsolver`` on the noise prediction. The ``sde-`` variants add noise each step.
Near the end the order drops (``lower_order_final``), which keeps few-step runs stable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import SIGMA_SPACING_DEFAULTS, NoiseGenerator, SchedulerOutput
from .families import SOLVER_DEFAULTS, DPMSolverBase
from .schedule import randn, sigmas_to_timesteps, solver_timesteps, train_sigmas


class DPMSolverMultistepScheduler(DPMSolverBase):
    defaults = {
        **SOLVER_DEFAULTS,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        **SIGMA_SPACING_DEFAULTS,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }

    def _round_karras_timesteps(self) -> bool:
        return self.config.beta_schedule != "squaredcos_cap_v2"

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        config = self.config
        # Skip the noisiest timesteps whose lambda is below lambda_min_clipped.
        clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), config.lambda_min_clipped)
        last_timestep = (config.num_train_timesteps - clipped).numpy().item()
        timesteps = solver_timesteps(config, num_inference_steps, last_timestep)
        if config.use_lu_lambdas:
            # Uniform steps in lambda (Lu et al. 2022b, "logSNR" spacing).
            log_sigmas = np.log(train_sigmas(self.alphas_cumprod))
            lambdas = np.flip(log_sigmas.copy())
            ramp = np.linspace(0, 1, num_inference_steps)
            lambdas = lambdas[0].item() + ramp * (lambdas[-1].item() - lambdas[0].item())
            sigmas = np.exp(lambdas)
            timesteps = sigmas_to_timesteps(sigmas, log_sigmas)
            if self._round_karras_timesteps():
                timesteps = timesteps.round()
        else:
            sigmas, timesteps, _ = self._spaced_sigmas(timesteps, num_inference_steps)
        self._set_schedule(self._sigma_table(sigmas, config.final_sigmas_type), timesteps, device)

    def second_order_update(self, sample: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Multistep DPM-Solver-2: a first difference of the last two predictions."""
        lambda_t, lambda_s0, lambda_s1 = self._lambdas(2)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        D1 = 1.0 / r0 * (m0 - m1)
        midpoint = self.config.solver_type == "midpoint"
        return self._update(sample, noise, h, 0, m0, D1, midpoint=midpoint)

    def third_order_update(self, sample: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Multistep DPM-Solver-3: first and second differences of the last three predictions."""
        lambda_t, lambda_s0, lambda_s1, lambda_s2 = self._lambdas(3)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        D1_0, D1_1 = 1.0 / r0 * (m0 - m1), 1.0 / r1 * (m1 - m2)
        D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
        D2 = 1.0 / (r0 + r1) * (D1_0 - D1_1)
        return self._update(sample, noise, h, 0, m0, D1, D2)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: NoiseGenerator = None,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput:
        self._start_step(timestep)
        config = self.config
        model_output = self.convert_model_output(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [model_output]
        sample = sample.to(torch.float32)
        noise = None
        if config.algorithm_type.startswith("sde-"):
            if variance_noise is None:
                noise = randn(model_output.shape, generator, model_output.device, torch.float32)
            else:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)

        # A last step to sigma 0 is first order: lambda is infinite there, so differences are not.
        order = self._multistep_order(config.euler_at_final or config.final_sigmas_type == "zero")
        if order == 1:
            prev_sample = self.first_order_update(model_output, sample, noise)
        elif order == 2:
            prev_sample = self.second_order_update(sample, noise)
        else:
            prev_sample = self.third_order_update(sample, noise)
        if self.lower_order_nums < config.solver_order:
            self.lower_order_nums += 1
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample)
