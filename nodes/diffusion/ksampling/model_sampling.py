"""A discrete-time diffusion model seen as a denoiser over continuous noise levels sigma.

A model trained on 1000 discrete timesteps has a table of noise levels
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``. k-diffusion-style samplers work in sigma
(variance-exploding form, ``x = x_0 + sigma * noise``), so this class maps sigma to the
timestep the network was trained on, scales the network's input, and turns its output
(epsilon, v or x_0) into a denoised estimate. The conventions are ComfyUI's, because its
images are what users compare with:

- the table is built in float64 from betas computed in float64, then stored in float32,
  ascending (index = timestep);
- the network gets the *nearest* trained timestep (nearest in log sigma), never a fractional
  one as diffusers' k-style schedulers pass;
- ``sigma(t)`` interpolates log sigma linearly between table entries, so schedules built on
  fractional timesteps land between trained noise levels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

# ComfyUI sets the last alpha_bar of a zero-terminal-SNR table to this tiny value instead of
# zero, so the last sigma stays finite (about 4519).
_ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def _cosine_betas(n: int, max_beta: float = 0.999) -> Tensor:
    """Betas of the squared-cosine alpha-bar curve (Nichol & Dhariwal 2021)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float64)


def betas_from_config(config: Mapping[str, Any]) -> Tensor:
    """The float64 training betas a diffusers scheduler config describes.

    diffusers' ``scaled_linear`` is ComfyUI's (and the original LDM's) ``linear``: betas are
    linear in sqrt(beta). diffusers' ``linear`` is linear in beta itself.
    """
    if config.get("trained_betas") is not None:
        return torch.as_tensor(config["trained_betas"], dtype=torch.float64)
    n = int(config.get("num_train_timesteps", 1000))
    start = float(config.get("beta_start", 0.00085))
    end = float(config.get("beta_end", 0.012))
    schedule = config.get("beta_schedule", "scaled_linear")
    if schedule == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if schedule == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if schedule == "squaredcos_cap_v2":
        return _cosine_betas(n)
    raise ValueError(
        f"beta_schedule {schedule!r} is not supported; "
        "use 'linear', 'scaled_linear' or 'squaredcos_cap_v2'"
    )


def _rescale_zero_terminal_snr(sigmas: Tensor) -> Tensor:
    """Shift sqrt(alpha_bar) so the last timestep is (almost) pure noise (Lin et al. 2023)."""
    root = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alpha_bar[-1] = _ZSNR_LAST_ALPHA_BAR
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def _per_item(sigma: Tensor, ndim: int) -> Tensor:
    """A scalar sigma as is, a per-item sigma [B] as [B, 1, 1, ...] to broadcast over x."""
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class DiscreteSampling:
    """The sigma table of a discrete-time model and the maps between sigma and its network.

    ``sigmas`` is ascending (``sigmas[t]`` is the noise level of timestep ``t``);
    ``sigma_min`` and ``sigma_max`` are 0-d float32 tensors.
    """

    sigma_data = 1.0

    def __init__(
        self, betas: Tensor, prediction_type: str = "epsilon", *, zero_terminal_snr: bool = False
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}"
            )
        self.prediction_type = prediction_type
        alphas_cumprod = torch.cumprod(1.0 - torch.as_tensor(betas).double(), dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zero_terminal_snr:
            sigmas = _rescale_zero_terminal_snr(sigmas)
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()
        self._log_sigma_copies: dict[torch.device, Tensor] = {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DiscreteSampling:
        """Read the training schedule from a diffusers ``scheduler_config.json`` dict."""
        return cls(
            betas_from_config(config),
            config.get("prediction_type", "epsilon"),
            zero_terminal_snr=bool(config.get("rescale_betas_zero_snr", False)),
        )

    @property
    def num_timesteps(self) -> int:
        return len(self.sigmas)

    @property
    def sigma_min(self) -> Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: Tensor) -> Tensor:
        """The trained timestep nearest to each sigma in log space (int64, shaped like sigma),
        found on sigma's device against a copy of the table kept there: moving sigma to the
        table's device and back would wait for the device at every step."""
        log_sigmas = self._log_sigmas_on(sigma.device)
        distance = sigma.log() - log_sigmas[:, None]
        return distance.abs().argmin(dim=0).view(sigma.shape)

    def _log_sigmas_on(self, device: torch.device) -> Tensor:
        if self.log_sigmas.device == device:
            return self.log_sigmas
        copies = self._log_sigma_copies
        if device not in copies:
            copies[device] = self.log_sigmas.to(device)
        return copies[device]

    def sigma(self, t: Tensor) -> Tensor:
        """The noise level at a possibly fractional timestep: log sigma interpolated linearly."""
        where = t.device
        t = torch.clamp(t.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(where)

    def percent_to_sigma(self, percent: float) -> float:
        """The sigma reached after ``percent`` of the sampling (0 = start, pure noise; 1 = end).

        Below 0 it answers a sigma above any schedule, above 1 zero, so that timestep ranges
        on conditioning can include or exclude the ends.
        """
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

    def calculate_input(self, sigma: Tensor, x: Tensor) -> Tensor:
        """The network's input: x scaled back to unit variance."""
        sigma = _per_item(sigma, x.ndim)
        return x / (sigma**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma: Tensor, model_output: Tensor, x: Tensor) -> Tensor:
        """The clean-sample estimate from the network's output, by prediction type."""
        sigma = _per_item(sigma, model_output.ndim)
        if self.prediction_type == "epsilon":
            return x - model_output * sigma
        if self.prediction_type == "v_prediction":
            total = sigma**2 + self.sigma_data**2
            return (
                x * self.sigma_data**2 / total - model_output * sigma * self.sigma_data / total**0.5
            )
        return model_output

    def noise_scaling(
        self, sigma: Tensor, noise: Tensor, latent: Tensor, max_denoise: bool = False
    ) -> Tensor:
        """The starting point of sampling: the latent plus noise at level sigma.

        From the top of the schedule (``max_denoise``) the noise is scaled by
        sqrt(1 + sigma^2), the total std of x at that level, as a pure-noise start.
        """
        sigma = _per_item(sigma, noise.ndim)
        if max_denoise:
            scaled = noise * torch.sqrt(1.0 + sigma**2.0)
        else:
            scaled = noise * sigma
        return scaled + latent

    def inverse_noise_scaling(self, sigma: Tensor, latent: Tensor) -> Tensor:
        """The sampler's result as a latent; the identity for variance-exploding sigmas."""
        return latent
