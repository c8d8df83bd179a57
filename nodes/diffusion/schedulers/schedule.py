"""The numerics every scheduler shares: noise schedule, timestep grids, sigmas, noise.

Every scheduler here reproduces the numerics of the diffusers class of the same name, because
users swap schedulers by name from a ``scheduler_config.json`` and expect the same images.
That is why some arithmetic is deliberately done the way diffusers does it: betas and
``alphas_cumprod`` in float32 torch, sigma interpolation in numpy (float32 table, float64
result), then back to float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

# --------------------------------------------------------------------------------------------
# Noise schedule


def betas_for_alpha_bar(
    num_steps: int, kind: str = "cosine", max_beta: float = 0.999
) -> torch.Tensor:
    """Betas that make the cumulative product follow a closed-form alpha-bar curve."""

    def alpha_bar(t: float) -> float:
        if kind == "cosine":
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        if kind == "exp":
            return math.exp(t * -12.0)
        lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-06)
        snr = math.exp(lmb)
        return math.sqrt(snr / (1 + snr))

    betas = [
        min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
        for i in range(num_steps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(config: Mapping[str, Any], allowed: tuple[str, ...]) -> torch.Tensor:
    """The training noise schedule named by the config, in float32 like the trained models."""
    n = config["num_train_timesteps"]
    start, end = config["beta_start"], config["beta_end"]
    schedule = config["beta_schedule"]
    if config.get("trained_betas") is not None:
        return torch.tensor(config["trained_betas"], dtype=torch.float32)
    if schedule not in allowed:
        raise ValueError(
            f"beta_schedule {schedule!r} is not supported here; choose one of {allowed}"
        )
    if schedule == "linear":
        return torch.linspace(start, end, n, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(n, "cosine")
    if schedule in ("exp", "laplace"):
        return betas_for_alpha_bar(n, schedule)
    return torch.sigmoid(torch.linspace(-6, 6, n)) * (end - start) + start  # sigmoid


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift the schedule so the last step is pure noise (Lin et al. 2023, algorithm 1)."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


# --------------------------------------------------------------------------------------------
# Timestep grids


def discrete_timesteps(config: Mapping[str, Any], n: int) -> np.ndarray:
    """Integer timesteps, descending, for the DDPM-family samplers (DDIM, DDPM, PNDM)."""
    total, spacing = config["num_train_timesteps"], config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, total - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = total // n
        return (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + config[
            "steps_offset"
        ]
    if spacing == "trailing":
        return np.round(np.arange(total, 0, -total / n)).astype(np.int64) - 1
    raise ValueError(
        f"timestep_spacing {spacing!r} is not one of 'linspace', 'leading', 'trailing'"
    )


def sigma_timesteps(config: Mapping[str, Any], n: int, total: int | None = None) -> np.ndarray:
    """Float32 timesteps, descending, for the k-diffusion samplers (Euler, Heun, LMS, KDPM2)."""
    total = total or config["num_train_timesteps"]
    spacing = config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, total - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = total // n
        steps = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.float32)
        return steps + config["steps_offset"]
    if spacing == "trailing":
        return np.arange(total, 0, -total / n).round().copy().astype(np.float32) - 1
    raise ValueError(
        f"timestep_spacing {spacing!r} is not one of 'linspace', 'leading', 'trailing'"
    )


def solver_timesteps(config: Mapping[str, Any], n: int, last: int | None = None) -> np.ndarray:
    """Integer timesteps for the multistep ODE solvers: an n+1 point grid with t=0 dropped."""
    total = config["num_train_timesteps"]
    last = total if last is None else last
    spacing = config.get("timestep_spacing", "linspace")
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        steps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        return steps + config["steps_offset"]
    if spacing == "trailing":
        return np.arange(last, 0, -total / n).round().copy().astype(np.int64) - 1
    raise ValueError(
        f"timestep_spacing {spacing!r} is not one of 'linspace', 'leading', 'trailing'"
    )


# --------------------------------------------------------------------------------------------
# Sigmas (noise level as std of x_t / alpha_t)


def train_sigmas(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for every training step, as a float32 array."""
    return np.array(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)


def interpolate_sigmas(timesteps: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Sigmas at (possibly fractional) timesteps by linear interpolation of the training table."""
    return np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)


def sigma_to_t(sigma: Any, log_sigmas: Any) -> Any:
    """The (fractional) training timestep whose sigma is ``sigma``, interpolating in log space."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def sigmas_to_timesteps_float32(sigmas: torch.Tensor, log_sigmas: torch.Tensor) -> np.ndarray:
    """``sigma_to_t`` for a float32 sigma tensor, all at once, in float32 arithmetic.

    Equals diffusers' per-element evaluation on tensors (KDPM2's midpoints) bit for bit: the log
    is numpy's float32 log, the interpolation torch float32.
    """
    log_sigma = torch.from_numpy(np.log(np.maximum(sigmas.numpy(), np.float32(1e-10))))
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low_idx = torch.cumsum(dists >= 0, dim=0).argmax(dim=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = torch.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).numpy()


def sigmas_to_timesteps(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    return np.array([sigma_to_t(sigma, log_sigmas) for sigma in sigmas])


def karras_sigmas(in_sigmas: np.ndarray, n: int, lo: float | None = None, hi: float | None = None):
    """Karras et al. (2022) eq. 5: sigmas evenly spaced in sigma^(1/7)."""
    sigma_min = lo if lo is not None else in_sigmas[-1].item()
    sigma_max = hi if hi is not None else in_sigmas[0].item()
    rho = 7.0
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(
    in_sigmas: np.ndarray, n: int, lo: float | None = None, hi: float | None = None
):
    """Sigmas evenly spaced in log sigma."""
    sigma_min = lo if lo is not None else in_sigmas[-1].item()
    sigma_max = hi if hi is not None else in_sigmas[0].item()
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def beta_sigmas(in_sigmas: np.ndarray, n: int, lo: float | None = None, hi: float | None = None):
    """Sigmas placed by a Beta(0.6, 0.6) quantile ramp (Lee et al. 2024); needs scipy."""
    try:
        import scipy.stats
    except ImportError as exc:
        raise ImportError("use_beta_sigmas needs scipy (pip install scipy)") from exc
    sigma_min = lo if lo is not None else in_sigmas[-1].item()
    sigma_max = hi if hi is not None else in_sigmas[0].item()
    ppfs = [scipy.stats.beta.ppf(t, 0.6, 0.6) for t in 1 - np.linspace(0, 1, n)]
    return np.array([sigma_min + ppf * (sigma_max - sigma_min) for ppf in ppfs])


def alpha_sigma_from_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t) of the variance-preserving process for a given sigma."""
    alpha_t = 1 / (sigma**2 + 1) ** 0.5
    return alpha_t, sigma * alpha_t


def randn(
    shape: torch.Size, generator: Any, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Noise drawn exactly as diffusers draws it: on the generator's device, one per generator."""
    rand_device = device
    if generator is not None:
        gen = generator[0] if isinstance(generator, list) else generator
        if gen.device.type != device.type and gen.device.type == "cpu":
            rand_device = torch.device("cpu")
        elif gen.device.type != device.type:
            raise ValueError(f"cannot draw {device} noise from a {gen.device.type} generator")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        one = (1,) + tuple(shape[1:])
        parts = [torch.randn(one, generator=g, device=rand_device, dtype=dtype) for g in generator]
        return torch.cat(parts, dim=0).to(device)
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Imagen): clip x0 to a per-sample percentile of its magnitude."""
    dtype = sample.dtype
    batch, channels, *rest = sample.shape
    if dtype not in (torch.float32, torch.float64):
        sample = sample.float()
    flat = sample.reshape(batch, channels * int(np.prod(rest)))
    s = torch.quantile(flat.abs(), ratio, dim=1)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)
    flat = torch.clamp(flat, -s, s) / s
    return flat.reshape(batch, channels, *rest).to(dtype)


def broadcast_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    values = values.flatten()
    while values.dim() < like.dim():
        values = values.unsqueeze(-1)
    return values
