"""DPM-Solver++ samplers (Lu et al. 2022, "DPM-Solver++"), in k-diffusion's sigma form.

They step in lambda = -log(sigma) (half the log signal-to-noise ratio), where the diffusion
ODE's linear part integrates exactly, so one step from sigma to sigma_next is

    x_next = (sigma_next / sigma) * x - expm1(-h) * D,   h = lambda_next - lambda,

with D a data estimate: the denoiser's output (first order), a blend with the previous step's
(2M, multistep) or the previous two steps' (3M), or with one taken at a midpoint (2S,
singlestep). The SDE variants add the matching amount of fresh noise from a Brownian tree so
that a seed reproduces; the ancestral variant splits each step like Euler-ancestral.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..noise import BrownianNoise, generator_noise
from .base import (
    Denoiser,
    StepCallback,
    ancestral_step,
    denoise_at,
    derivative,
    lands_on_zero,
    levels,
    per_item,
)


def _lambda(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma(lam: Tensor) -> Tensor:
    return lam.neg().exp()


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, seed: int, callback: StepCallback | None = None
) -> Tensor:
    """DPM-Solver++(2M): second order from the current and the previous data estimates."""
    previous: Tensor | None = None
    host = levels(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        lam, lam_next = _lambda(sigma), _lambda(sigma_next)
        h = lam_next - lam
        estimate = denoised
        if previous is not None and host[i + 1] != 0:
            # Extrapolate the data estimate linearly in lambda to the middle of the step.
            r = (lam - _lambda(sigmas[i - 1])) / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (_sigma(lam_next) / _sigma(lam)) * x - (-h).expm1() * estimate
        previous = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2S) steps down to sigma_down, then fresh noise up to sigma_next."""
    noise = generator_noise(x, seed)
    host = levels(sigmas)
    to_zero = lands_on_zero(host, eta)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if to_zero[i]:
            x = x + derivative(x, sigma, denoised) * (sigma_down - sigma)
        else:
            lam, lam_down = _lambda(sigma), _lambda(sigma_down)
            h = lam_down - lam
            lam_mid = lam + h / 2
            x_mid = (_sigma(lam_mid) / _sigma(lam)) * x - (-h * (1 / 2)).expm1() * denoised
            denoised_mid = model(x_mid, per_item(_sigma(lam_mid), x))
            x = (_sigma(lam_down) / _sigma(lam)) * x - (-h).expm1() * denoised_mid
        if host[i + 1] > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 1 / 2,
    noise_on_device: bool = False,
) -> Tensor:
    """Stochastic DPM-Solver++ with a midpoint stage at fraction ``r`` of each step in lambda;
    each stage steps down ancestrally (in the exponential form) and adds Brownian noise."""
    if len(sigmas) <= 1:
        return x
    noise = BrownianNoise(x, sigmas, seed, on_device=noise_on_device)
    weight = 1 / (2 * r)
    host = levels(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        if host[i + 1] == 0:
            x = denoised
            continue
        lam, lam_next = _lambda(sigma), _lambda(sigma_next)
        h = lam_next - lam
        lam_mid = lam + r * h
        sigma_mid = _sigma(lam_mid)
        alpha = sigma * lam.exp()
        alpha_mid = sigma_mid * lam_mid.exp()
        alpha_next = sigma_next * lam_next.exp()

        # Stage 1: to the midpoint.
        down, up = ancestral_step(lam.neg().exp(), lam_mid.neg().exp(), eta)
        h_det = down.log().neg() - lam
        x_mid = (alpha_mid / alpha) * (-h_det).exp() * x - alpha_mid * (-h_det).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_mid = x_mid + alpha_mid * noise(sigma, sigma_mid) * s_noise * up
        denoised_mid = model(x_mid, per_item(sigma_mid, x))

        # Stage 2: the whole step, with the blended data estimate.
        down, up = ancestral_step(lam.neg().exp(), lam_next.neg().exp(), eta)
        h_det = down.log().neg() - lam
        blended = (1 - weight) * denoised + weight * denoised_mid
        x = (alpha_next / alpha) * (-h_det).exp() * x - alpha_next * (-h_det).expm1() * blended
        if eta > 0 and s_noise > 0:
            x = x + alpha_next * noise(sigma, sigma_next, host[i:i + 2]) * s_noise * up
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    noise_on_device: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) SDE: the multistep update of the SDE, with Brownian noise. The second-
    order correction uses the midpoint or the Heun rule (``solver_type``)."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type {solver_type!r} is not 'midpoint' or 'heun'")
    if len(sigmas) <= 1:
        return x
    noise = BrownianNoise(x, sigmas, seed, on_device=noise_on_device)
    previous: Tensor | None = None
    h: Tensor | None = None
    h_last: Tensor | None = None
    host = levels(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        if host[i + 1] == 0:
            x = denoised
        else:
            lam, lam_next = _lambda(sigma), _lambda(sigma_next)
            h = lam_next - lam
            h_eta = h * (eta + 1)
            alpha_next = sigma_next * lam_next.exp()
            growth = (-h_eta).expm1().neg()
            x = sigma_next / sigma * (-h * eta).exp() * x + alpha_next * growth * denoised
            if previous is not None and h_last is not None:
                r = h_last / h
                change = denoised - previous
                if solver_type == "heun":
                    x = x + alpha_next * (growth / (-h_eta) + 1) * (1 / r) * change
                else:
                    x = x + 0.5 * alpha_next * growth * (1 / r) * change
            if eta > 0 and s_noise > 0:
                spread = (-2 * h * eta).expm1().neg().sqrt()
                x = x + noise(sigma, sigma_next, host[i:i + 2]) * sigma_next * spread * s_noise
        previous = denoised
        h_last = h
    return x


def _phi_2(h: Tensor) -> Tensor:
    """1 - (1 - e^-h) / h: the weight of the first derivative of D in lambda (times h) when
    the exponentially weighted integral over a step of length h is expanded in a series."""
    return (-h).expm1() / h + 1


def _phi_3(h: Tensor, phi_2: Tensor) -> Tensor:
    """The next weight of that series, for the second derivative, from ``phi_2``."""
    return phi_2 / h - 0.5


@torch.no_grad()
def sample_dpmpp_3m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_on_device: bool = False,
) -> Tensor:
    """DPM-Solver++(3M) SDE: the multistep update of the SDE to third order.

    D is fitted in lambda through the data estimates of this and up to two earlier steps (a
    line after one step, a parabola after two) and the fit's first and second derivatives
    enter the exponential integrator through its phi weights, taken over the SDE's longer
    effective step (1 + eta) * h. Brownian noise is added as in the 2M SDE sampler.
    """
    if len(sigmas) <= 1:
        return x
    noise = BrownianNoise(x, sigmas, seed, on_device=noise_on_device)
    # The data estimates of the previous steps and those steps' lengths in lambda, newest first.
    earlier: list[Tensor] = []
    earlier_h: list[Tensor] = []
    host = levels(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        if host[i + 1] == 0:
            x = denoised
            continue
        lam, lam_next = _lambda(sigma), _lambda(sigma_next)
        h = lam_next - lam
        h_eta = h * (eta + 1)
        alpha_next = sigma_next * lam_next.exp()
        growth = (-h_eta).expm1().neg()
        x = sigma_next / sigma * (-h * eta).exp() * x + alpha_next * growth * denoised
        if earlier:
            phi_2 = _phi_2(h_eta)
            # Divided differences in units of this step's h: the slope over the last interval
            # (times h), and with two earlier points the parabola's second difference too.
            r0 = earlier_h[0] / h
            slope = (denoised - earlier[0]) / r0
            if len(earlier) == 1:
                x = x + (alpha_next * phi_2) * slope
            else:
                r1 = earlier_h[1] / h
                older_slope = (earlier[0] - earlier[1]) / r1
                bend = slope - older_slope
                first = slope + bend * r0 / (r0 + r1)
                second = bend / (r0 + r1)
                phi_3 = _phi_3(h_eta, phi_2)
                x = x + (alpha_next * phi_2) * first - (alpha_next * phi_3) * second
        if eta > 0 and s_noise > 0:
            spread = (-2 * h * eta).expm1().neg().sqrt()
            x = x + noise(sigma, sigma_next, host[i:i + 2]) * sigma_next * spread * s_noise
        earlier = [denoised, *earlier][:2]
        earlier_h = [h, *earlier_h][:2]
    return x
