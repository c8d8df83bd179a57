"""Where stochastic samplers get their fresh noise, so that one seed reproduces one image.

A noise sampler is called as ``noise(sigma, sigma_next)`` once per noise injection and returns
unit-variance noise shaped like x; a sampler that knows the two levels as host floats passes
them too (``levels``), so the Brownian tree is queried without reading the device. Two kinds,
matching what ComfyUI draws for the same seed:

- ``generator_noise``: one ``torch.Generator`` on x's device seeded with the seed, drawn from
  in call order (ancestral samplers, DDPM, LCM). On a GPU the stream differs from the CPU's,
  as it does in ComfyUI.
- ``BrownianNoise``: increments of one Brownian motion over sigma (a ``torchsde``
  Brownian tree, seeded with the seed), for the SDE samplers. The noise for an interval
  depends only on the interval, not on the order of the calls, which is what makes the SDE
  samplers converge as the step count grows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

NoiseSampler = Callable[..., Tensor]


def generator_noise(x: Tensor, seed: int) -> NoiseSampler:
    """Standard normal noise from one generator on x's device, seeded once."""
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)

    def draw(sigma: Tensor, sigma_next: Tensor, levels: Sequence[float] | None = None
             ) -> Tensor:
        return torch.randn(
            x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator
        )

    return draw


class BrownianNoise:
    """Normalised increments W(sigma_next) - W(sigma) of a seeded Brownian motion over sigma.

    The tree spans the positive sigmas of the schedule. It lives on the CPU unless
    ``on_device`` (ComfyUI's ``*_gpu`` samplers), which gives different noise on a GPU. It is
    built at the first draw, so a schedule that never draws noise never needs one.
    """

    def __init__(self, x: Tensor, sigmas: Tensor, seed: int, on_device: bool = False) -> None:
        self._like = x
        self._low = sigmas[sigmas > 0].min()
        self._high = sigmas.max()
        self._seed = seed
        self._on_cpu = not on_device
        self._tree: Any = None

    def _build(self) -> Any:
        import torchsde  # Imported late: only the SDE samplers need it.

        low, high, start = self._low, self._high, torch.zeros_like(self._like)
        if self._on_cpu:
            low, high, start = low.detach().cpu(), high.detach().cpu(), start.detach().cpu()
        return torchsde.BrownianTree(low, start, high, entropy=self._seed)

    def __call__(self, sigma: Tensor, sigma_next: Tensor,
                 levels: Sequence[float] | None = None) -> Tensor:
        """The increment from sigma to sigma_next; `levels`: the same two as host floats
        (the tree reads its times as floats anyway), sparing a read of the device."""
        if self._tree is None:
            self._tree = self._build()
        if levels is not None:
            return self._increment(sigma, sigma_next, float(levels[0]), float(levels[1]))
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        # The tree answers W(hi) - W(lo) for lo < hi; sampling runs down in sigma, so the
        # increment from sigma to sigma_next is the negative of that.
        lo, hi, sign = (sigma, sigma_next, 1) if sigma < sigma_next else (sigma_next, sigma, -1)
        device, dtype = lo.device, lo.dtype
        if self._on_cpu:
            lo, hi = lo.detach().cpu().float(), hi.detach().cpu().float()
        with warnings.catch_warnings():
            # torchsde warns when an end of the schedule, after float32 rounding, falls a hair
            # outside the tree's span; the increment is still the right one.
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            increment = self._tree(lo, hi).to(device=device, dtype=dtype) * sign
        return increment / (sigma_next - sigma).abs().sqrt()

    def _increment(self, sigma: Tensor, sigma_next: Tensor, start: float, end: float
                   ) -> Tensor:
        """As `__call__`, with the interval's ends given on the host. The CPU tree's answer
        goes up without waiting (`non_blocking`: from pageable memory CUDA stages it)."""
        lo, hi, sign = (start, end, 1) if start < end else (end, start, -1)
        like = self._like
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            increment = self._tree(lo, hi)
        increment = increment.to(device=like.device, dtype=sigma.dtype, non_blocking=True)
        return increment * sign / (sigma_next - sigma).abs().sqrt()
