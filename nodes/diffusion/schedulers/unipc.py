"""UniPC multistep (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework").

One model call per step. Each step first corrects the sample it is given with the model
output just computed (UniC, reusing that evaluation for free), then predicts the next sample
from the stored history (UniP). Both are exponential integrators in lambda whose polynomial
coefficients solve a small linear system (B(h) = expm1(h) for the default ``bh2``).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import SIGMA_SPACING_DEFAULTS, SchedulerOutput
from .families import SOLVER_DEFAULTS, SolverScheduler
from .schedule import solver_timesteps


class UniPCMultistepScheduler(SolverScheduler):
    defaults = {
        **SOLVER_DEFAULTS,
        "predict_x0": True,
        "solver_type": "bh2",
        "lower_order_final": True,
        "disable_corrector": [],
        "solver_p": None,
        **SIGMA_SPACING_DEFAULTS,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "final_sigmas_type": "zero",
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
        "sigma_min": None,
        "sigma_max": None,
        "shift_terminal": None,
    }

    def _check_options(self) -> None:
        if self.config.shift_terminal is not None:
            raise ValueError("shift_terminal is only supported with use_flow_sigmas")
        if self.config.solver_p is not None:
            raise ValueError("solver_p (an external predictor scheduler) is not supported")
        if self.config.solver_type in ("midpoint", "heun", "logrho"):
            self._update_config(solver_type="bh2")
        elif self.config.solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type {self.config.solver_type!r} is not 'bh1' or 'bh2'")

    def _setup(self) -> None:
        super()._setup()
        self.predict_x0 = self.config.predict_x0
        self.disable_corrector = self.config.disable_corrector
        self.this_order = 1

    def _reset_history(self) -> None:
        super()._reset_history()
        self.last_sample: torch.Tensor | None = None

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        timesteps = solver_timesteps(self.config, num_inference_steps)
        sigmas, timesteps, respaced = self._spaced_sigmas(timesteps, num_inference_steps)
        respaced_end = sigmas[-1] if respaced else None
        table = self._sigma_table(sigmas, self.config.final_sigmas_type, respaced_end)
        self._set_schedule(table, timesteps, device)

    def convert_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """x_0 (``predict_x0``, the default) or epsilon, from any prediction type."""
        if not self.predict_x0:
            return self._eps_from_output(model_output, sample)
        return self._thresholded(self._x0_from_output(model_output, sample))

    def _lambda(self, index: int) -> torch.Tensor:
        return self._alpha_sigma_lambda(index)[2]

    def _bh_system(
        self, h: torch.Tensor, rks: list[torch.Tensor], order: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The order conditions of UniPC: R (powers of the step ratios r_k) and b (phi terms)."""
        rks = torch.stack(rks + [torch.ones(())])
        hh = -h if self.predict_x0 else h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial_i = 1
        B_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        R, b = [], []
        for i in range(1, order + 1):
            R.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        return torch.stack(R), torch.stack(b), h_phi_1, B_h

    def _exponential_step(
        self, x: torch.Tensor, m0: torch.Tensor, t_index: int, s_index: int, h_phi_1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first-order (DDIM-like) part of both the predictor and the corrector, and the
        factor (alpha_t or sigma_t) that scales the higher-order correction."""
        alpha_t, sigma_t = self._alpha_sigma(t_index)
        alpha_s0, sigma_s0 = self._alpha_sigma(s_index)
        if self.predict_x0:
            return sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0, alpha_t
        return alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0, sigma_t

    def predictor_update(self, sample: torch.Tensor, order: int) -> torch.Tensor:
        """UniP-p: predict the next sample from the last ``order`` converted outputs."""
        i = self.step_index
        m0 = self.model_outputs[-1]
        lambda_s0 = self._lambda(i)
        h = self._lambda(i + 1) - lambda_s0
        rks, D1s = [], []
        for k in range(1, order):
            rk = (self._lambda(i - k) - lambda_s0) / h
            rks.append(rk)
            D1s.append((self.model_outputs[-(k + 1)] - m0) / rk)
        R, b, h_phi_1, B_h = self._bh_system(h, rks, order)
        x_t_, scale = self._exponential_step(sample, m0, i + 1, i, h_phi_1)
        pred_res: Any = 0
        if D1s:
            if order == 2:
                rhos_p = torch.ones(1, dtype=sample.dtype) * 0.5
            else:
                rhos_p = torch.linalg.solve(R[:-1, :-1], b[:-1]).to(sample.dtype)
            pred_res = torch.einsum("k,bkc...->bc...", rhos_p, torch.stack(D1s, dim=1))
        return (x_t_ - scale * B_h * pred_res).to(sample.dtype)

    def corrector_update(
        self,
        model_t: torch.Tensor,
        last_sample: torch.Tensor,
        this_sample: torch.Tensor,
        order: int,
    ) -> torch.Tensor:
        """UniC: redo the previous step with the new model output included."""
        i = self.step_index
        m0 = self.model_outputs[-1]
        lambda_s0 = self._lambda(i - 1)
        h = self._lambda(i) - lambda_s0
        rks, D1s = [], []
        for k in range(1, order):
            rk = (self._lambda(i - (k + 1)) - lambda_s0) / h
            rks.append(rk)
            D1s.append((self.model_outputs[-(k + 1)] - m0) / rk)
        R, b, h_phi_1, B_h = self._bh_system(h, rks, order)
        x = last_sample
        if order == 1:
            rhos_c = torch.ones(1, dtype=x.dtype) * 0.5
        else:
            rhos_c = torch.linalg.solve(R, b).to(x.dtype)
        x_t_, scale = self._exponential_step(x, m0, i, i - 1, h_phi_1)
        corr_res: Any = 0
        if D1s:
            corr_res = torch.einsum("k,bkc...->bc...", rhos_c[:-1], torch.stack(D1s, dim=1))
        D1_t = model_t - m0
        return (x_t_ - scale * B_h * (corr_res + rhos_c[-1] * D1_t)).to(x.dtype)

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None
    ) -> SchedulerOutput:
        """Deterministic; ``generator`` is accepted for a uniform interface and ignored."""
        self._start_step(timestep)
        use_corrector = (
            self.step_index > 0
            and self.step_index - 1 not in self.disable_corrector
            and self.last_sample is not None
        )
        converted = self.convert_model_output(model_output, sample)
        if use_corrector:
            sample = self.corrector_update(converted, self.last_sample, sample, self.this_order)
        self.model_outputs = self.model_outputs[1:] + [converted]

        order = self.config.solver_order
        if self.config.lower_order_final:
            order = min(order, len(self.timesteps) - self.step_index)
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        prev_sample = self.predictor_update(sample, self.this_order)
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample)
