"""DPM-Solver and DPM-Solver++ singlestep (Lu et al. 2022a, 2022b). One model call per step.

Where the multistep solver reuses past steps, the singlestep solver groups consecutive steps
into one higher-order step: with order 2, steps alternate between a first-order move to an
intermediate point and a second-order move from the group's start (``order_list``). All
updates of a group start from the sample saved at its first step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import SIGMA_SPACING_DEFAULTS, NoiseGenerator, SchedulerOutput
from .families import SOLVER_DEFAULTS, DPMSolverBase
from .schedule import randn


class DPMSolverSinglestepScheduler(DPMSolverBase):
    defaults = {
        **SOLVER_DEFAULTS,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": False,
        **SIGMA_SPACING_DEFAULTS,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }
    algorithms = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")

    def _setup(self) -> None:
        super()._setup()
        total = self.config.num_train_timesteps
        self.order_list = self.get_order_list(total)
        self.sample: torch.Tensor | None = None

    def get_order_list(self, steps: int) -> list[int]:
        """The solver order of each step: repeated groups 1, 2(, 3), lower at the end."""
        order = self.config.solver_order
        if order > 3:
            raise ValueError("solver_order above 3 is not supported by the singlestep solver")
        if self.config.lower_order_final:
            if order == 3:
                if steps % 3 == 0:
                    orders = [1, 2, 3] * (steps // 3 - 1) + [1, 2] + [1]
                elif steps % 3 == 1:
                    orders = [1, 2, 3] * (steps // 3) + [1]
                else:
                    orders = [1, 2, 3] * (steps // 3) + [1, 2]
            elif order == 2:
                if steps % 2 == 0:
                    orders = [1, 2] * (steps // 2 - 1) + [1, 1]
                else:
                    orders = [1, 2] * (steps // 2) + [1]
            else:
                orders = [1] * steps
        else:
            orders = list(range(1, order + 1)) * (steps // order)
        if self.config.final_sigmas_type == "zero":
            orders[-1] = 1
        return orders

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        config = self.config
        clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), config.lambda_min_clipped)
        last = config.num_train_timesteps - 1 - clipped.item()
        timesteps = np.linspace(0, last, num_inference_steps + 1).round()[::-1][:-1]
        timesteps = timesteps.copy().astype(np.int64)
        sigmas, timesteps, _ = self._spaced_sigmas(timesteps, num_inference_steps)
        self._set_schedule(self._sigma_table(sigmas, config.final_sigmas_type), timesteps, device)
        self.sample = None
        # An odd step count, or a final step to sigma 0, needs the lower-order ending.
        if not config.lower_order_final and num_inference_steps % config.solver_order != 0:
            self._update_config(lower_order_final=True)
        if not self.config.lower_order_final and config.final_sigmas_type == "zero":
            self._update_config(lower_order_final=True)
        self.order_list = self.get_order_list(num_inference_steps)

    def second_order_update(self, sample: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Singlestep DPM-Solver-2 from s1 (the group start) via s0 to t."""
        lambda_t, lambda_s0, lambda_s1 = self._lambdas(2)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s1, lambda_s0 - lambda_s1
        r0 = h_0 / h
        D1 = 1.0 / r0 * (m0 - m1)
        midpoint = self.config.solver_type == "midpoint"
        return self._update(sample, noise, h, 1, m1, D1, midpoint=midpoint)

    def third_order_update(self, sample: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Singlestep DPM-Solver-3 from s2 (the group start) via s1 and s0 to t."""
        lambda_t, lambda_s0, lambda_s1, lambda_s2 = self._lambdas(3)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s2, lambda_s0 - lambda_s2, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        D1_0, D1_1 = 1.0 / r1 * (m1 - m2), 1.0 / r0 * (m0 - m2)
        if self.config.solver_type == "midpoint":
            # The midpoint form keeps only the first difference over the whole group.
            return self._update(sample, noise, h, 2, m2, D1_1)
        D1 = (r0 * D1_0 - r1 * D1_1) / (r0 - r1)
        D2 = 2.0 * (D1_1 - D1_0) / (r0 - r1)
        return self._update(sample, noise, h, 2, m2, D1, D2)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: NoiseGenerator = None,
    ) -> SchedulerOutput:
        self._start_step(timestep)
        model_output = self.convert_model_output(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [model_output]
        noise = None
        if self.config.algorithm_type == "sde-dpmsolver++":
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)

        order = self.order_list[self.step_index]
        while self.model_outputs[-order] is None:  # entered part-way: not enough history yet
            order -= 1
        if order == 1:
            self.sample = sample  # the start of a new group
        if order == 1:
            prev_sample = self.first_order_update(self.model_outputs[-1], self.sample, noise)
        elif order == 2:
            prev_sample = self.second_order_update(self.sample, noise)
        else:
            prev_sample = self.third_order_update(self.sample, noise)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample)
