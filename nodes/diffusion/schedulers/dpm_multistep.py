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

from .base import SIGMA_SPACING_DEFAULTS, SchedulerOutput
from .families import SOLVER_DEFAULTS, SolverScheduler
from .schedule import randn, sigmas_to_timesteps, solver_timesteps, threshold_sample, train_sigmas

ALGORITHMS = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")


class DPMSolverBase(SolverScheduler):
    """What the multistep and singlestep DPM-Solvers share: the model-output conversion and
    the first-order step."""

    algorithms: tuple[str, ...] = ALGORITHMS

    def _setup(self) -> None:
        self._reject_unsupported()
        config = self.config
        # Names of other solvers' variants map onto the closest one here, as in diffusers.
        if config.algorithm_type == "deis":
            self._update_config(algorithm_type="dpmsolver++")
        elif config.algorithm_type not in self.algorithms:
            raise ValueError(
                f"algorithm_type {config.algorithm_type!r} is not one of {self.algorithms}"
            )
        if config.solver_type in ("logrho", "bh1", "bh2"):
            self._update_config(solver_type="midpoint")
        elif config.solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type {config.solver_type!r} is not 'midpoint' or 'heun'")
        if self.config.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++"):
            if self.config.final_sigmas_type == "zero":
                raise ValueError(
                    f"final_sigmas_type 'zero' needs a dpmsolver++ algorithm, not "
                    f"{self.config.algorithm_type!r}; use 'sigma_min'"
                )
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        total = config.num_train_timesteps
        self.timesteps = torch.from_numpy(
            np.linspace(0, total - 1, total, dtype=np.float32)[::-1].copy()
        )
        self._reset_history()

    def _final_sigma(self) -> Any:
        """The sigma after the last step: 0 (fully denoised) or the smallest training sigma."""
        if self.config.final_sigmas_type == "sigma_min":
            ac0 = self.alphas_cumprod[0]
            return ((1 - ac0) / ac0) ** 0.5
        if self.config.final_sigmas_type == "zero":
            return 0
        raise ValueError("final_sigmas_type must be 'zero' or 'sigma_min'")

    def convert_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """What the solver extrapolates: x_0 for the ++ variants, epsilon otherwise."""
        config = self.config
        learned = config.variance_type in ("learned", "learned_range")
        if config.prediction_type == "epsilon" and learned:
            model_output = model_output[:, :3]
        if config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            x0_pred = self._x0_from_output(model_output, sample)
            if config.thresholding:
                x0_pred = threshold_sample(
                    x0_pred, config.dynamic_thresholding_ratio, config.sample_max_value
                )
            return x0_pred
        epsilon = self._eps_from_output(model_output, sample)
        if config.thresholding:
            alpha_t, sigma_t = self._alpha_sigma(self.step_index)
            x0_pred = (sample - sigma_t * epsilon) / alpha_t
            x0_pred = threshold_sample(
                x0_pred, config.dynamic_thresholding_ratio, config.sample_max_value
            )
            epsilon = (sample - alpha_t * x0_pred) / sigma_t
        return epsilon

    def _second_order_step(
        self,
        sample: torch.Tensor,
        noise: torch.Tensor | None,
        h: torch.Tensor,
        D0: torch.Tensor,
        D1: torch.Tensor,
        alphas_sigmas: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> torch.Tensor | None:
        """The DPM-Solver-2 update both solvers share, given the start (s) and the target (t).

        ``alphas_sigmas`` is (alpha_t, sigma_t, alpha_s, sigma_s). Returns ``None`` for
        ``sde-dpmsolver``, which only the multistep solver has.
        """
        alpha_t, sigma_t, alpha_s, sigma_s = alphas_sigmas
        algorithm, midpoint = self.config.algorithm_type, self.config.solver_type == "midpoint"
        if algorithm == "dpmsolver++":
            x = sigma_t / sigma_s * sample - alpha_t * (torch.exp(-h) - 1.0) * D0
            if midpoint:
                return x - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1
            return x + alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0) * D1
        if algorithm == "dpmsolver":
            x = alpha_t / alpha_s * sample - sigma_t * (torch.exp(h) - 1.0) * D0
            if midpoint:
                return x - 0.5 * (sigma_t * (torch.exp(h) - 1.0)) * D1
            return x - sigma_t * ((torch.exp(h) - 1.0) / h - 1.0) * D1
        if algorithm == "sde-dpmsolver++":
            x = (
                sigma_t / sigma_s * torch.exp(-h) * sample
                + alpha_t * (1 - torch.exp(-2.0 * h)) * D0
            )
            if midpoint:
                x = x + 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h))) * D1
            else:
                x = x + alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0) * D1
            return x + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        return None

    def first_order_update(
        self, m0: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """DPM-Solver-1, which is DDIM in lambda."""
        i = self.step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        alpha_s, sigma_s, lambda_s = self._alpha_sigma_lambda(i)
        h = lambda_t - lambda_s
        algorithm = self.config.algorithm_type
        if algorithm == "dpmsolver++":
            return sigma_t / sigma_s * sample - alpha_t * (torch.exp(-h) - 1.0) * m0
        if algorithm == "dpmsolver":
            return alpha_t / alpha_s * sample - sigma_t * (torch.exp(h) - 1.0) * m0
        if algorithm == "sde-dpmsolver++":
            return (
                sigma_t / sigma_s * torch.exp(-h) * sample
                + alpha_t * (1 - torch.exp(-2.0 * h)) * m0
                + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
            )
        return (
            alpha_t / alpha_s * sample
            - 2.0 * (sigma_t * (torch.exp(h) - 1.0)) * m0
            + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise
        )


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

        self.sigmas = torch.from_numpy(
            np.concatenate([sigmas, [self._final_sigma()]]).astype(np.float32)
        )
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_history()

    def second_order_update(self, sample: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Multistep DPM-Solver-2: a first difference of the last two predictions."""
        i = self.step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(i)
        _, _, lambda_s1 = self._alpha_sigma_lambda(i - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        D0, D1 = m0, 1.0 / r0 * (m0 - m1)
        x = self._second_order_step(
            sample, noise, h, D0, D1, (alpha_t, sigma_t, alpha_s0, sigma_s0)
        )
        if x is not None:
            return x
        midpoint = self.config.solver_type == "midpoint"
        x = alpha_t / alpha_s0 * sample - 2.0 * (sigma_t * (torch.exp(h) - 1.0)) * D0
        if midpoint:
            x = x - sigma_t * (torch.exp(h) - 1.0) * D1
        else:
            x = x - 2.0 * (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)) * D1
        return x + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise

    def third_order_update(self, sample: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """Multistep DPM-Solver-3: first and second differences of the last three predictions."""
        i = self.step_index
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(i)
        _, _, lambda_s1 = self._alpha_sigma_lambda(i - 1)
        _, _, lambda_s2 = self._alpha_sigma_lambda(i - 2)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        D0 = m0
        D1_0, D1_1 = 1.0 / r0 * (m0 - m1), 1.0 / r1 * (m1 - m2)
        D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
        D2 = 1.0 / (r0 + r1) * (D1_0 - D1_1)
        algorithm = self.config.algorithm_type
        if algorithm == "dpmsolver++":
            return (
                sigma_t / sigma_s0 * sample
                - alpha_t * (torch.exp(-h) - 1.0) * D0
                + alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0) * D1
                - alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5) * D2
            )
        if algorithm == "dpmsolver":
            return (
                alpha_t / alpha_s0 * sample
                - sigma_t * (torch.exp(h) - 1.0) * D0
                - sigma_t * ((torch.exp(h) - 1.0) / h - 1.0) * D1
                - sigma_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5) * D2
            )
        if algorithm == "sde-dpmsolver++":
            return (
                sigma_t / sigma_s0 * torch.exp(-h) * sample
                + alpha_t * (1.0 - torch.exp(-2.0 * h)) * D0
                + alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0) * D1
                + alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5) * D2
                + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
            )
        raise ValueError("sde-dpmsolver has no third-order update; use solver_order=2")

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput:
        self._start_step(timestep)
        config, last = self.config, len(self.timesteps)
        few_steps = config.lower_order_final and last < 15
        lower_order_final = self.step_index == last - 1 and (
            config.euler_at_final or few_steps or config.final_sigmas_type == "zero"
        )
        lower_order_second = self.step_index == last - 2 and few_steps

        model_output = self.convert_model_output(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [model_output]
        sample = sample.to(torch.float32)
        noise = None
        if config.algorithm_type.startswith("sde-"):
            if variance_noise is None:
                noise = randn(model_output.shape, generator, model_output.device, torch.float32)
            else:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)

        if config.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev_sample = self.first_order_update(model_output, sample, noise)
        elif config.solver_order == 2 or self.lower_order_nums < 2 or lower_order_second:
            prev_sample = self.second_order_update(sample, noise)
        else:
            prev_sample = self.third_order_update(sample, noise)
        if self.lower_order_nums < config.solver_order:
            self.lower_order_nums += 1
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample)
