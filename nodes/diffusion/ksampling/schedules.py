"""Sigma schedules: which noise levels a sampler visits, from sigma_max down to 0.

Each schedule returns ``steps + 1`` float32 sigmas, descending, the last one 0 (``ddim_uniform``
with a step count that does not divide the 1000 timesteps returns a few more, as ComfyUI's
does). The names and the order of ``SCHEDULER_NAMES`` are ComfyUI's. Schedules either pick
entries of the model's sigma table (``simple``, ``ddim_uniform``, ``beta``), interpolate it
at evenly spaced fractional timesteps (``normal``, ``sgm_uniform``), or only use its two ends
(``karras``, ``exponential``, ``kl_optimal``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .beta_quantile import beta_quantile
from .model_sampling import DiscreteSampling


def _with_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022), eq. 5: evenly spaced in sigma^(1/rho), dense near sigma_min."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _with_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Evenly spaced in log sigma."""
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Evenly spaced in arctan(sigma) (Align Your Steps' KL-optimal schedule).

    One step goes from sigma_max to 0 (ComfyUI's formula divides by zero there).
    """
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float32)
    ramp = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = ramp.new_zeros(n + 1)
    sigmas[:-1] = (ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)).tan_()
    return sigmas


def simple_sigmas(ms: DiscreteSampling, steps: int) -> Tensor:
    """Every (1000/steps)-th entry of the table, counted down from the top."""
    stride = len(ms.sigmas) / steps
    picked = [float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.FloatTensor(picked + [0.0])


def ddim_uniform_sigmas(ms: DiscreteSampling, steps: int) -> Tensor:
    """DDIM's "uniform" grid: timesteps 1, 1 + k, 1 + 2k, ... with k = 1000 // steps."""
    sigmas: list[float] = [0.0]
    if math.isclose(float(ms.sigmas[1]), 0, abs_tol=0.00001):
        # The table already reaches (almost) zero: no extra 0 at the end, one more step.
        steps += 1
        sigmas = []
    stride = max(len(ms.sigmas) // steps, 1)
    sigmas += [float(ms.sigmas[t]) for t in range(1, len(ms.sigmas), stride)]
    return torch.FloatTensor(sigmas[::-1])


def normal_sigmas(ms: DiscreteSampling, steps: int, sgm: bool = False) -> Tensor:
    """Evenly spaced (fractional) timesteps from the top of the table to the bottom.

    ``sgm`` is the SGM-uniform variant: ``steps + 1`` points with the last one dropped, so the
    final step goes from a higher noise level straight to 0.
    """
    start = float(ms.timestep(ms.sigma_max))
    end = float(ms.timestep(ms.sigma_min))
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(torch.tensor(end))), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigmas = [float(ms.sigma(t)) for t in timesteps]
    return torch.FloatTensor(sigmas + [0.0] if append_zero else sigmas)


def beta_sigmas(ms: DiscreteSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """Table entries at Beta(alpha, beta) quantiles of the timesteps (Lee et al. 2024).

    Quantiles that round to the same timestep are visited once, so the schedule can be
    shorter than ``steps`` for large step counts.
    """
    last = len(ms.sigmas) - 1
    sigmas: list[float] = []
    previous = -1.0
    spacing = 1.0 / steps
    for i in range(steps):
        t = round(beta_quantile(1.0 - i * spacing, alpha, beta) * last)
        if t != previous:
            sigmas.append(float(ms.sigmas[int(t)]))
        previous = t
    return torch.FloatTensor(sigmas + [0.0])


def linear_quadratic_sigmas(
    ms: DiscreteSampling, steps: int, threshold_noise: float = 0.025
) -> Tensor:
    """Mochi's schedule: linear in the first half of the steps, then quadratic, times sigma_max."""
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [
            quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)
        ]
        fractions = [1.0 - f for f in linear + quadratic + [1.0]]
    return torch.FloatTensor(fractions) * ms.sigma_max.cpu()


def _from_ends(
    schedule: Callable[[int, float, float], Tensor],
) -> Callable[[DiscreteSampling, int], Tensor]:
    def build(ms: DiscreteSampling, steps: int) -> Tensor:
        return schedule(steps, float(ms.sigma_min), float(ms.sigma_max))

    return build


def _sgm_uniform(ms: DiscreteSampling, steps: int) -> Tensor:
    return normal_sigmas(ms, steps, sgm=True)


_SCHEDULES: dict[str, Callable[[DiscreteSampling, int], Tensor]] = {
    "simple": simple_sigmas,
    "sgm_uniform": _sgm_uniform,
    "karras": _from_ends(karras_sigmas),
    "exponential": _from_ends(exponential_sigmas),
    "ddim_uniform": ddim_uniform_sigmas,
    "beta": beta_sigmas,
    "normal": normal_sigmas,
    "linear_quadratic": linear_quadratic_sigmas,
    "kl_optimal": _from_ends(kl_optimal_sigmas),
}

SCHEDULER_NAMES: tuple[str, ...] = tuple(_SCHEDULES)


def calculate_sigmas(ms: DiscreteSampling, scheduler: str, steps: int) -> Tensor:
    """The named schedule of ``steps`` steps for this model: float32 on the CPU, ending in 0."""
    try:
        schedule = _SCHEDULES[scheduler]
    except KeyError:
        raise ValueError(
            f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULER_NAMES)}"
        ) from None
    return schedule(ms, steps)
