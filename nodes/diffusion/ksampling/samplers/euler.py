"""The Karras et al. (2022) family: Euler, Heun and DPM-Solver-2 steps of the probability-flow
ODE, and their ancestral (noise-injecting) variants.

The ODE is dx/dsigma = (x - D(x; sigma)) / sigma. Euler takes one step along that slope;
Heun (Karras algorithm 1) corrects it with the slope at the end of the step; DPM-2 uses the
slope at the geometric midpoint of the step. The ancestral variants step down to sigma_down
and add fresh noise of std sigma_up (``ancestral_step``). Every second-order method falls back
to one Euler step on the final step to sigma = 0, where the slope is undefined.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..noise import generator_noise
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


@torch.no_grad()
def sample_euler(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, seed: int, callback: StepCallback | None = None
) -> Tensor:
    """Euler steps (Karras algorithm 2 without churn). Deterministic: ``seed`` is unused."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        slope = derivative(x, sigma, denoised)
        x = x + slope * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler steps down to sigma_down, then fresh noise up to sigma_next."""
    noise = generator_noise(x, seed)
    to_zero = lands_on_zero(levels(sigmas), eta)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if to_zero[i]:
            x = denoised
            continue
        slope = derivative(x, sigma, denoised)
        x = x + slope * (sigma_down - sigma) + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, seed: int, callback: StepCallback | None = None
) -> Tensor:
    """Heun's second-order method (trapezoid rule on the slope); two model calls per step."""
    host = levels(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        slope = derivative(x, sigma, denoised)
        dt = sigma_next - sigma
        if host[i + 1] == 0:
            x = x + slope * dt
            continue
        x_end = x + slope * dt
        slope_end = derivative(x_end, sigma_next, model(x_end, per_item(sigma_next, x)))
        x = x + (slope + slope_end) / 2 * dt
    return x


def _log_midpoint(a: Tensor, b: Tensor) -> Tensor:
    """The geometric mean of two sigmas, taken through their logs."""
    return a.log().lerp(b.log(), 0.5).exp()


def _midpoint_move(model: Denoiser, x: Tensor, sigma: Tensor, slope: Tensor,
                   target: Tensor) -> Tensor:
    """DPM-Solver-2's move from sigma to target: the whole step taken with the slope found
    at their log-midpoint (one extra model call)."""
    sigma_mid = _log_midpoint(sigma, target)
    x_mid = x + slope * (sigma_mid - sigma)
    slope_mid = derivative(x_mid, sigma_mid, model(x_mid, per_item(sigma_mid, x)))
    return x + slope_mid * (target - sigma)


@torch.no_grad()
def sample_dpm_2(
    model: Denoiser, x: Tensor, sigmas: Tensor, *, seed: int, callback: StepCallback | None = None
) -> Tensor:
    """DPM-Solver-2 in sigma: the whole step taken with the slope at the log-midpoint."""
    host = levels(sigmas)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        slope = derivative(x, sigma, denoised)
        if host[i + 1] == 0:
            x = x + slope * (sigma_next - sigma)
            continue
        x = _midpoint_move(model, x, sigma, slope, sigma_next)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-2 steps down to sigma_down, then fresh noise up to sigma_next."""
    noise = generator_noise(x, seed)
    to_zero = lands_on_zero(levels(sigmas), eta)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise_at(model, x, sigma, i, callback)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        slope = derivative(x, sigma, denoised)
        if to_zero[i]:
            x = x + slope * (sigma_down - sigma)
            continue
        x = _midpoint_move(model, x, sigma, slope, sigma_down)
        x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x
