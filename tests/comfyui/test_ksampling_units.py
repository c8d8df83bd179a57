"""``nodes.diffusion.ksampling`` without the ComfyUI oracle: its own Beta quantiles against
scipy's, the errors it raises, and the per-step callback contract every sampler keeps."""

from __future__ import annotations

import pytest
import torch

from nodes.diffusion.ksampling import (
    SAMPLER_NAMES,
    DiscreteSampling,
    calculate_sigmas,
    prepare_noise,
    sample,
    sampler_function,
    sampler_sigmas,
)
from nodes.diffusion.ksampling.beta_quantile import beta_quantile


@pytest.mark.parametrize(("a", "b"), [(0.6, 0.6), (0.5, 2.0), (3.0, 1.5)])
def test_beta_quantile_matches_scipy(a: float, b: float) -> None:
    stats = pytest.importorskip("scipy.stats")
    for p in [0.0, 1e-6, 0.001, 0.1, 0.25, 0.5, 0.73, 0.999, 1.0]:
        assert beta_quantile(p, a, b) == pytest.approx(stats.beta.ppf(p, a, b), abs=1e-12)


def test_unknown_names_list_the_choices() -> None:
    ms = DiscreteSampling.from_config({})
    with pytest.raises(ValueError, match="unknown scheduler 'fast'.*karras"):
        calculate_sigmas(ms, "fast", 4)
    with pytest.raises(ValueError, match="unknown sampler 'eulerr'.*euler_ancestral"):
        sampler_function("eulerr")
    with pytest.raises(ValueError, match="prediction_type 'x0'"):
        DiscreteSampling(torch.full((10,), 0.01), "x0")
    with pytest.raises(ValueError, match="beta_schedule 'sigmoid'"):
        DiscreteSampling.from_config({"beta_schedule": "sigmoid"})


class _Shrink:
    """A denoiser that predicts a fixed fraction of x: enough to drive every sampler."""

    def __init__(self) -> None:
        self.model_sampling = DiscreteSampling.from_config({})

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return 0.5 * x / (1 + sigma.view(-1, 1, 1, 1) ** 2) ** 0.5


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_reports_each_step_once(name: str) -> None:
    model = _Shrink()
    latent = torch.zeros(1, 4, 4, 4)
    sigmas = sampler_sigmas(model.model_sampling, name, "karras", 5)
    steps: list[int] = []
    out = sample(model, prepare_noise(latent, 3), latent, sigmas, name, 3,
                 callback=lambda i, x, denoised: steps.append(i))  # fmt: skip
    assert steps == list(range(len(sigmas) - 1))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_ancestral_sampling_without_fresh_noise_is_euler() -> None:
    model = _Shrink()
    x = prepare_noise(torch.zeros(1, 4, 4, 4), 8) * 14.6
    sigmas = calculate_sigmas(model.model_sampling, "normal", 6)
    plain = sampler_function("euler")(model, x, sigmas, seed=1)
    quiet = sampler_function("euler_ancestral", eta=0.0)(model, x, sigmas, seed=1)
    noisy = sampler_function("euler_ancestral")(model, x, sigmas, seed=1)
    torch.testing.assert_close(quiet, plain, atol=1e-6, rtol=0)
    assert (noisy - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_sde_multistep_without_noise_ignores_the_seed(name: str) -> None:
    """At eta 0 the SDE samplers are plain multistep ODE solvers: no Brownian noise, so the
    seed is irrelevant; at eta 1 it is not."""
    model = _Shrink()
    x = prepare_noise(torch.zeros(1, 4, 4, 4), 8) * 14.6
    sigmas = calculate_sigmas(model.model_sampling, "karras", 6)
    quiet = [sampler_function(name, eta=0.0)(model, x, sigmas, seed=s) for s in (1, 2)]
    noisy = [sampler_function(name)(model, x, sigmas, seed=s) for s in (1, 2)]
    assert torch.equal(quiet[0], quiet[1])
    assert (noisy[0] - noisy[1]).abs().max() > 1e-3
