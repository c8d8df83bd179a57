"""The samplers by ComfyUI name, in ComfyUI's order.

``sampler_function(name)`` returns a ``SamplerFn``. ``ddim`` is Euler under another name, as
in ComfyUI (the Euler step of the probability-flow ODE is DDIM with eta = 0); it differs only
in drawing fresh noise for masked (inpainting) sampling, which ``Sampler.fresh_mask_noise``
records. The ``*_gpu`` variants keep the SDE samplers' Brownian tree on x's device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .base import Denoiser, SamplerFn, StepCallback
from .discrete import sample_ddpm, sample_lcm
from .dpmpp import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from .euler import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from .lms import sample_lms
from .unipc import sample_unipc, sample_unipc_bh2


@dataclass(frozen=True)
class Sampler:
    """A sampling algorithm with its fixed options; callable as a ``SamplerFn``."""

    name: str
    algorithm: Callable[..., Tensor]
    options: dict[str, Any] = field(default_factory=dict)
    # Masked sampling re-noises the kept region with fresh noise (seed + 1), not the input's.
    fresh_mask_noise: bool = False

    def __call__(
        self,
        model: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        *,
        seed: int,
        callback: StepCallback | None = None,
    ) -> Tensor:
        return self.algorithm(model, x, sigmas, seed=seed, callback=callback, **self.options)


_SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("euler", sample_euler),
        Sampler("euler_ancestral", sample_euler_ancestral),
        Sampler("heun", sample_heun),
        Sampler("dpm_2", sample_dpm_2),
        Sampler("dpm_2_ancestral", sample_dpm_2_ancestral),
        Sampler("lms", sample_lms),
        Sampler("dpmpp_2s_ancestral", sample_dpmpp_2s_ancestral),
        Sampler("dpmpp_sde", sample_dpmpp_sde),
        Sampler("dpmpp_sde_gpu", sample_dpmpp_sde, {"noise_on_device": True}),
        Sampler("dpmpp_2m", sample_dpmpp_2m),
        Sampler("dpmpp_2m_sde", sample_dpmpp_2m_sde),
        Sampler("dpmpp_2m_sde_gpu", sample_dpmpp_2m_sde, {"noise_on_device": True}),
        Sampler("dpmpp_2m_sde_heun", sample_dpmpp_2m_sde, {"solver_type": "heun"}),
        Sampler(
            "dpmpp_2m_sde_heun_gpu",
            sample_dpmpp_2m_sde,
            {"solver_type": "heun", "noise_on_device": True},
        ),
        Sampler("dpmpp_3m_sde", sample_dpmpp_3m_sde),
        Sampler("dpmpp_3m_sde_gpu", sample_dpmpp_3m_sde, {"noise_on_device": True}),
        Sampler("ddpm", sample_ddpm),
        Sampler("lcm", sample_lcm),
        Sampler("ddim", sample_euler, fresh_mask_noise=True),
        Sampler("uni_pc", sample_unipc),
        Sampler("uni_pc_bh2", sample_unipc_bh2),
    )
}

SAMPLER_NAMES: tuple[str, ...] = tuple(_SAMPLERS)

# Samplers whose last step misbehaves from the second-lowest sigma of a schedule: ComfyUI
# builds their schedules one step longer and drops that sigma.
DROP_PENULTIMATE_SIGMA: frozenset[str] = frozenset(
    {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}
)


def sampler_function(name: str, **options: Any) -> Sampler:
    """The sampler called ``name``; ``options`` (e.g. ``eta``, ``s_noise``) override its own."""
    try:
        sampler = _SAMPLERS[name]
    except KeyError:
        raise ValueError(
            f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}"
        ) from None
    if options:
        merged = {**sampler.options, **options}
        return Sampler(sampler.name, sampler.algorithm, merged, sampler.fresh_mask_noise)
    return sampler


__all__ = [
    "DROP_PENULTIMATE_SIGMA",
    "SAMPLER_NAMES",
    "Denoiser",
    "Sampler",
    "SamplerFn",
    "StepCallback",
    "sampler_function",
]
