"""Linear multistep (Adams-Bashforth in sigma), order up to 4.

Each step integrates the Lagrange polynomial through the last few ODE slopes over
[sigma_i, sigma_{i+1}]. The weights are integrals of polynomials, so they are computed exactly
(in float64, from the float32 schedule); the last step to sigma = 0 returns the denoised
estimate directly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import Denoiser, StepCallback, denoise_at, derivative


def multistep_weight(order: int, sigmas: np.ndarray, i: int, j: int) -> float:
    """The integral over [sigmas[i], sigmas[i+1]] of the Lagrange basis polynomial that is 1 at
    sigmas[i - j] and 0 at the other ``order - 1`` most recent nodes."""
    if order - 1 > i:
        raise ValueError(f"multistep order {order} needs {order} earlier steps, not {i}")
    basis = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            # The gap between two nodes is taken in the schedule's own precision (float32,
            # as ComfyUI does): with very uneven steps the weights grow large and amplify
            # any difference in it.
            gap = float(sigmas[i - j] - sigmas[i - k])
            basis = basis * np.polynomial.Polynomial([-float(sigmas[i - k]), 1.0]) / gap
    antiderivative = basis.integ()
    return float(antiderivative(float(sigmas[i + 1])) - antiderivative(float(sigmas[i])))


@torch.no_grad()
def sample_lms(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    seed: int,
    callback: StepCallback | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep steps using up to ``order`` previous slopes. Deterministic."""
    nodes = sigmas.detach().cpu().numpy()
    slopes: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = denoise_at(model, x, sigma, i, callback)
        slopes = (slopes + [derivative(x, sigma, denoised)])[-order:]
        if nodes[i + 1] == 0:
            x = denoised
            continue
        current = min(i + 1, order)
        weights = [multistep_weight(current, nodes, i, j) for j in range(current)]
        increment: Tensor | int = 0
        for weight, slope in zip(weights, reversed(slopes), strict=False):
            increment = increment + weight * slope
        x = x + increment
    return x
