"""The two families of sigma-indexed schedulers: k-diffusion samplers and ODE solvers.

They differ in how a sample relates to its noise level: the k-diffusion samplers work on
x = x_0 + sigma * noise (variance exploding) and scale the model input to unit variance; the
solvers work on the variance-preserving x = alpha_t x_0 + sigma_t noise directly. The two
DPM-Solvers (multistep and singlestep) also share their update formula, ``DPMSolverBase``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from .base import TRAINING_DEFAULTS, IndexedScheduler
from .schedule import (
    alpha_sigma_from_sigma,
    interpolate_sigmas,
    sigma_timesteps,
    threshold_sample,
    train_sigmas,
)

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

    def _setup(self) -> None:
        """Until ``set_timesteps``, every training step, as diffusers' constructors lay out."""
        self.set_timesteps(self.config.num_train_timesteps)

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

    def _sigma_grid(
        self, n: int, final_sigmas_type: str = "zero"
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, bool]:
        """The n-step sigmas and timesteps all k-diffusion samplers start from.

        Returns (sigma table, timesteps, training log sigmas, respaced): the float32 table ends
        with the sigma after the last step; respaced grids (Karras...) come with timesteps
        mapped back from their sigmas.
        """
        timesteps = sigma_timesteps(self.config, n)
        sigmas = train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(sigmas)
        sigmas = self._interpolate_sigmas(timesteps, sigmas, n)
        sigmas, respaced = self._reshape_sigmas(sigmas, log_sigmas, n)
        table = self._sigma_table(sigmas, final_sigmas_type)
        if respaced is None:
            return table, timesteps, log_sigmas, False
        return table, respaced, log_sigmas, True

    def add_noise(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        return original + noise * self._sigmas_at(original, timesteps)


class SolverScheduler(IndexedScheduler):
    """Base of the exponential-integrator solvers (DPM-Solver, DEIS, UniPC) on the VP process."""

    unknown_timestep_is_last = True
    floor_terminal_alpha = True
    init_noise_sigma = 1.0

    def _setup(self) -> None:
        self._reject_unsupported()
        self._check_options()
        # Until set_timesteps, the full training schedule, as diffusers' constructors lay out.
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        total = self.config.num_train_timesteps
        self.timesteps = torch.from_numpy(
            np.linspace(0, total - 1, total, dtype=np.float32)[::-1].copy()
        )
        self._reset_history()

    def _reject_unsupported(self) -> None:
        for key in ("use_flow_sigmas", "use_dynamic_shifting"):
            if self.config.get(key):
                raise ValueError(f"{key} (flow-matching models) is not supported by Noodle")
        if self.config.prediction_type == "flow_prediction":
            raise ValueError("prediction_type 'flow_prediction' is not supported by Noodle")

    @abstractmethod
    def _check_options(self) -> None:
        """Reject what this solver does not offer, and map the ``algorithm_type`` and
        ``solver_type`` names of other solvers onto its closest variant, as diffusers does, so
        that swapping a config between solvers keeps working."""

    def _start_step(self, timestep: Any) -> None:
        """Every solver step needs a laid-out schedule and a placed step counter."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self.step_index is None:
            self._init_step_index(timestep)

    def _per_schedule(self, name: str) -> dict[Any, Any]:
        """A memo for values that depend only on the schedule (and a step index), emptied
        when ``set_timesteps`` lays out a new one."""
        cached = self.__dict__.get("_memo")
        if cached is None or cached[0] is not self.sigmas:
            cached = (self.sigmas, {})
            self._memo = cached
        return cached[1].setdefault(name, {})

    def _alpha_sigma(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_t, sigma_t, _ = self._alpha_sigma_lambda(index)
        return alpha_t, sigma_t

    def _alpha_sigma_lambda(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """alpha_t, sigma_t and the half log-SNR lambda_t = log(alpha_t / sigma_t) at a step,
        computed once per schedule and index: a multistep update asks for the same few
        several times per step, and each is a handful of scalar ops."""
        table = self._per_schedule("alpha_sigma_lambda")
        if index not in table:
            alpha_t, sigma_t = alpha_sigma_from_sigma(self.sigmas[index])
            table[index] = (alpha_t, sigma_t, torch.log(alpha_t) - torch.log(sigma_t))
        return table[index]

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

    def _set_schedule(
        self, sigmas: torch.Tensor, timesteps: np.ndarray, device: str | torch.device | None
    ) -> None:
        """Install a new schedule; its step count is the grid's, which clipping can shorten."""
        self.sigmas = sigmas
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_history()

    def _multistep_order(self, first_order_last: bool = False) -> int:
        """The order this step can afford: it grows with the history of outputs, and short
        runs (``lower_order_final``, under 15 steps) drop back over their last two steps,
        which keeps few-step sampling stable. ``first_order_last`` ends every run on order 1.
        """
        config, last, i = self.config, len(self.timesteps), self.step_index
        few_steps = config.lower_order_final and last < 15
        if config.solver_order == 1 or self.lower_order_nums < 1:
            return 1
        if i == last - 1 and (first_order_last or few_steps):
            return 1
        if config.solver_order == 2 or self.lower_order_nums < 2:
            return 2
        if i == last - 2 and few_steps:
            return 2
        return 3

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

    def _thresholded(self, x0_pred: torch.Tensor) -> torch.Tensor:
        """Imagen's dynamic thresholding of x_0, when the config asks for it."""
        config = self.config
        if not config.thresholding:
            return x0_pred
        return threshold_sample(x0_pred, config.dynamic_thresholding_ratio, config.sample_max_value)

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


class DPMSolverBase(SolverScheduler):
    """What the multistep and singlestep DPM-Solvers share: the model-output conversion and
    the update formula. They differ only in which past outputs they difference, and from where
    a step starts."""

    algorithms: ClassVar[tuple[str, ...]] = (
        "dpmsolver",
        "dpmsolver++",
        "sde-dpmsolver",
        "sde-dpmsolver++",
    )

    def _check_options(self) -> None:
        config = self.config
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

    def _setup(self) -> None:
        super()._setup()
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)

    def convert_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """What the solver extrapolates: x_0 for the ++ variants, epsilon otherwise."""
        config = self.config
        learned = config.variance_type in ("learned", "learned_range")
        if config.prediction_type == "epsilon" and learned:
            model_output = model_output[:, :3]
        if config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            return self._thresholded(self._x0_from_output(model_output, sample))
        epsilon = self._eps_from_output(model_output, sample)
        if config.thresholding:
            alpha_t, sigma_t = self._alpha_sigma(self.step_index)
            x0_pred = self._thresholded((sample - sigma_t * epsilon) / alpha_t)
            epsilon = (sample - alpha_t * x0_pred) / sigma_t
        return epsilon

    def _lambdas(self, count: int) -> list[torch.Tensor]:
        """lambda at the next step t, then at this step s0 and the ``count - 1`` before it."""
        i = self.step_index
        return [self._alpha_sigma_lambda(i + 1 - k)[2] for k in range(count + 1)]

    def _update(
        self,
        sample: torch.Tensor,
        noise: torch.Tensor | None,
        h: torch.Tensor,
        back: int,
        D0: torch.Tensor,
        D1: torch.Tensor | None = None,
        D2: torch.Tensor | None = None,
        midpoint: bool = False,
    ) -> torch.Tensor:
        """The DPM-Solver step to the next sigma from the sample ``back`` steps ago, for the
        configured algorithm, over the log-SNR interval ``h``.

        Its order is set by the differences given: D0 alone is DPM-Solver-1 (DDIM in lambda),
        D1 adds the second-order term (``midpoint`` or Heun form), D2 the third-order one.
        """
        alpha_t, sigma_t = self._alpha_sigma(self.step_index + 1)
        alpha_s, sigma_s = self._alpha_sigma(self.step_index - back)
        algorithm = self.config.algorithm_type
        if algorithm == "dpmsolver++":
            phi = torch.exp(-h) - 1.0
            x = sigma_t / sigma_s * sample - alpha_t * phi * D0
            if D1 is not None and midpoint:
                x = x - 0.5 * (alpha_t * phi) * D1
            elif D1 is not None:
                x = x + alpha_t * (phi / h + 1.0) * D1
            if D2 is not None:
                x = x - alpha_t * ((phi + h) / h**2 - 0.5) * D2
            return x
        if algorithm == "dpmsolver":
            phi = torch.exp(h) - 1.0
            x = alpha_t / alpha_s * sample - sigma_t * phi * D0
            if D1 is not None and midpoint:
                x = x - 0.5 * (sigma_t * phi) * D1
            elif D1 is not None:
                x = x - sigma_t * (phi / h - 1.0) * D1
            if D2 is not None:
                x = x - sigma_t * ((phi - h) / h**2 - 0.5) * D2
            return x
        if algorithm == "sde-dpmsolver++":
            decay = 1.0 - torch.exp(-2.0 * h)
            x = sigma_t / sigma_s * torch.exp(-h) * sample + alpha_t * decay * D0
            if D1 is not None and midpoint:
                x = x + 0.5 * (alpha_t * decay) * D1
            elif D1 is not None:
                x = x + alpha_t * (decay / (-2.0 * h) + 1.0) * D1
            if D2 is not None:
                x = x + alpha_t * ((decay - 2.0 * h) / (2.0 * h) ** 2 - 0.5) * D2
            return x + sigma_t * torch.sqrt(decay) * noise
        if D2 is not None:
            raise ValueError("sde-dpmsolver has no third-order update; use solver_order=2")
        phi = torch.exp(h) - 1.0
        x = alpha_t / alpha_s * sample - 2.0 * (sigma_t * phi) * D0
        if D1 is not None and midpoint:
            x = x - sigma_t * phi * D1
        elif D1 is not None:
            x = x - 2.0 * (sigma_t * (phi / h - 1.0)) * D1
        return x + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise

    def first_order_update(
        self, m0: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """DPM-Solver-1, which is DDIM in lambda."""
        lambda_t, lambda_s = self._lambdas(1)
        return self._update(sample, noise, lambda_t - lambda_s, 0, m0)
