"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) with a corrector (UniC) that reuses
the model call of the next step, so the correction is free.

It works in the variance-preserving parametrisation of DPM-Solver: for a sigma (here used
directly as the time variable), alpha = 1/sqrt(1 + sigma^2), std = sqrt(1 - alpha^2) and
lambda = log(alpha / std), with x_vp = alpha * x. The model is used as a data predictor
(x_0). Each update of order p extrapolates the x_0 estimates of the last p points in lambda;
the coefficients solve a small linear system built from phi functions of h, with B(h) = h
("bh1") or expm1(h) ("bh2"). The order ramps up from 1 over the first steps, is at most 3,
and drops again for the last steps. The last sigma (0) is replaced by 0.001, where lambda is
finite.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Denoiser, StepCallback, notify

_END_SIGMA = 0.001


class _VPSchedule:
    """alpha, std and lambda of the variance-preserving process at a sigma."""

    @staticmethod
    def log_alpha(sigma: Tensor) -> Tensor:
        return 0.5 * torch.log(1 / ((sigma * sigma) + 1))

    def alpha(self, sigma: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(sigma))

    def std(self, sigma: Tensor) -> Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(sigma)))

    def lam(self, sigma: Tensor) -> Tensor:
        log_alpha = self.log_alpha(sigma)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _per_pixel(v: Tensor, ndim: int) -> Tensor:
    return v[(...,) + (None,) * (ndim - 1)]


class _UniPC:
    def __init__(self, model: Denoiser, variant: str) -> None:
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"UniPC variant {variant!r} is not 'bh1' or 'bh2'")
        self.model = model
        self.variant = variant
        self.vp = _VPSchedule()
        self._half: Tensor | None = None

    def half(self, like: Tensor) -> Tensor:
        """The fixed coefficient [0.5] of the order-1 corrector and order-2 predictor, made
        on the device once per run rather than copied up at every step."""
        if self._half is None:
            self._half = torch.tensor([0.5], device=like.device)
        return self._half

    def data_prediction(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x_0 from the VP sample, through the model's noise prediction at that sigma."""
        s = sigma.view(sigma.shape[:1] + (1,) * (x.ndim - 1))
        x_ve = x * ((s**2 + 1.0) ** 0.5)
        eps = (x_ve - self.model(x_ve, sigma)) / s
        alpha, std = self.vp.alpha(sigma), self.vp.std(sigma)
        return (x - _per_pixel(std, x.ndim) * eps) / _per_pixel(alpha, x.ndim)

    def update(
        self,
        x: Tensor,
        x0_history: list[Tensor],
        sigma_history: list[Tensor],
        sigma: Tensor,
        order: int,
        correct: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """One UniP step to ``sigma`` of the given order, then UniC if ``correct``; returns
        the new x and, when corrected, the model's x_0 at the new point."""
        vp, ndim = self.vp, x.ndim
        x0_last, sigma_last = x0_history[-1], sigma_history[-1]
        lam_last, lam = vp.lam(sigma_last), vp.lam(sigma)
        std_last, std = vp.std(sigma_last), vp.std(sigma)
        alpha = torch.exp(vp.log_alpha(sigma))
        h = lam - lam_last

        # Ratios of earlier step sizes to this one, and scaled differences of the estimates.
        # Stacked on the device (`torch.tensor` of device scalars would read each back).
        ratios: list[Tensor] = []
        differences: list[Tensor] = []
        for k in range(1, order):
            ratio = ((vp.lam(sigma_history[-(k + 1)]) - lam_last) / h)[0]
            ratios.append(ratio)
            differences.append((x0_history[-(k + 1)] - x0_last) / ratio)
        ratios.append(torch.ones_like(h[0]))
        ratio_vector = torch.stack(ratios).float()

        # The order conditions (UniPC, eq. 8): rows are powers of the ratios, the right-hand
        # side holds k! * phi_{k+1}(h) / B(h), with phi_k from its recurrence. In data
        # prediction the step runs in -h.
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows, rhs = [], []
        factorial = 1
        for k in range(1, order + 1):
            rows.append(torch.pow(ratio_vector, k - 1))
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        system = torch.stack(rows)
        target = torch.stack(rhs).float()

        stacked = torch.stack(differences, dim=1) if differences else None
        # First-order (DPM-Solver++ 1) step; the predictor adds the weighted differences.
        x_first = _per_pixel(std / std_last, ndim) * x - _per_pixel(alpha * h_phi_1, ndim) * x0_last
        if stacked is None:
            x_new = x_first
        else:
            if order == 2:
                predictor = self.half(x)
            else:
                predictor = torch.linalg.solve(system[:-1, :-1], target[:-1])
            predicted = torch.tensordot(stacked, predictor, dims=([1], [0]))
            x_new = x_first - _per_pixel(alpha * b_h, ndim) * predicted
        if not correct:
            return x_new, None

        # The corrector also uses the model's estimate at the new point, which the next
        # step reuses: no extra model call.
        if order == 1:
            corrector = self.half(x)
        else:
            corrector = torch.linalg.solve(system, target)
        x0_new = self.data_prediction(x_new, sigma)
        corrected: Tensor | int = 0
        if stacked is not None:
            corrected = torch.tensordot(stacked, corrector[:-1], dims=([1], [0]))
        step = corrected + corrector[-1] * (x0_new - x0_last)
        return x_first - _per_pixel(alpha * b_h, ndim) * step, x0_new


@torch.no_grad()
def sample_unipc(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    variant: str = "bh1",
) -> Tensor:
    """UniPC multistep sampling, order up to 3. Deterministic: ``seed`` is unused.

    With a single step it takes no step at all, as ComfyUI's does: x only comes back
    divided by its total std sqrt(1 + sigma_0^2).
    """
    if len(sigmas) <= 1:
        return x
    solver = _UniPC(model, variant)
    vp = solver.vp
    times = sigmas.clone()
    if times[-1] == 0:
        times[-1] = _END_SIGMA
    steps = len(times) - 1
    max_order = min(3, steps - 1)
    batch = x.shape[0]

    def report(i: int, x_vp: Tensor, sigma: Tensor, x0: Tensor) -> None:
        notify(callback, i, x_vp / vp.alpha(sigma), x0)

    x = x / torch.sqrt(1.0 + times[0] ** 2.0)
    first = times[0].expand(batch)
    x0_history = [solver.data_prediction(x, first)]
    sigma_history = [first]
    report(0, x, times[0], x0_history[-1])
    if steps < 2:
        return x / vp.alpha(times[-1])
    for k in range(1, steps + 1):
        target = times[k].expand(batch)
        if k < max_order:
            # Warm-up: one order higher per step, keeping every point.
            x, x0 = solver.update(x, x0_history, sigma_history, target, k, correct=True)
            x0_history.append(_required(x0))
            sigma_history.append(target)
        else:
            # Lower orders again for the last steps; no correction (and no model call) after
            # the last one.
            order = min(max_order, steps + 1 - k)
            x, x0 = solver.update(x, x0_history, sigma_history, target, order, correct=k < steps)
            newest = _required(x0) if k < steps else x0_history[-1]
            x0_history = x0_history[1:] + [newest]
            sigma_history = sigma_history[1:] + [target]
        if k <= steps - 2:
            report(k, x, times[k], x0_history[-1])
    # The last two updates count as one step, as ComfyUI counts them.
    report(steps - 1, x, times[-1], x0_history[-1])
    return x / vp.alpha(times[-1])


def _required(x0: Tensor | None) -> Tensor:
    if x0 is None:
        raise RuntimeError("a corrected UniPC update returns the model's x_0")
    return x0


@torch.no_grad()
def sample_unipc_bh2(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, seed: int, callback: StepCallback | None = None
) -> Tensor:
    """UniPC with B(h) = expm1(h)."""
    return sample_unipc(model, x, sigmas, seed=seed, callback=callback, variant="bh2")
