"""ComfyUI parity of ``nodes.diffusion.ksampling``, against ComfyUI's own code run in-process.

Every sampler with every scheduler, on a tiny deterministic "network" (a fixed smooth function
of the scaled input and the timestep), wrapped by each side's own model-sampling object: the
final latents agree within 1e-5. So do the sigma table and its maps, every schedule, the
initial noise, KSampler's schedule arithmetic and its start/end step slicing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

from nodes.diffusion.ksampling import (
    SAMPLER_NAMES,
    SCHEDULER_NAMES,
    DiscreteSampling,
    calculate_sigmas,
    cfg_combine,
    prepare_noise,
    sample,
    sampler_sigmas,
)
from tests.support.comfy_oracle import (
    ComfySamplerHarness,
    comfy_model_sampling,
    import_comfy,
    oracle_available,
)

pytestmark = pytest.mark.skipif(not oracle_available(), reason="ComfyUI oracle not found")

# The samplers and schedulers the compatibility issue names (ComfyUI has more of both).
REQUIRED_SAMPLERS = (
    "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2m",
    "dpmpp_2m_sde", "dpmpp_sde", "dpmpp_2s_ancestral", "ddim", "uni_pc", "uni_pc_bh2", "lcm",
    "ddpm",
)  # fmt: skip
REQUIRED_SCHEDULERS = (
    "normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta",
)  # fmt: skip

SD15 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
TOLERANCE = dict(atol=1e-5, rtol=0.0)
SEED = 1234

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@pytest.fixture(scope="module")
def comfy() -> dict[str, Any]:
    return import_comfy()


def _ours(prediction: str = "epsilon") -> DiscreteSampling:
    return DiscreteSampling.from_config({**SD15, "prediction_type": prediction})


def _network(ms: Any) -> DenoiseFn:
    """A fixed smooth stand-in for a UNet, wrapped by ``ms``'s input scaling, timestep map
    and output conversion, exactly where a real denoiser uses them."""
    mix = torch.randn(4, 4, generator=torch.Generator().manual_seed(7)) * 0.3

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_in = ms.calculate_input(sigma, x)
        t = ms.timestep(sigma).float().view(-1, 1, 1, 1)
        # Mostly "the input is the noise", bent by a channel mix, a neighbour and the timestep.
        out = 0.9 * x_in + 0.2 * torch.tanh(torch.einsum("ij,bjhw->bihw", mix, x_in))
        out = out + 0.1 * torch.sin(t / 100.0) + 0.05 * x_in.roll(1, dims=-1)
        return ms.calculate_denoised(sigma, out, x)

    return denoise


class _Denoiser:
    def __init__(self, ms: DiscreteSampling) -> None:
        self.model_sampling = ms
        self._fn = _network(ms)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self._fn(x, sigma)


def _harness(comfy: dict[str, Any], prediction: str = "epsilon") -> ComfySamplerHarness:
    ms = comfy_model_sampling(comfy, prediction)
    return ComfySamplerHarness(comfy, ms, _network(ms))


def _run_both(
    comfy: dict[str, Any],
    sampler: str,
    scheduler: str,
    steps: int,
    *,
    prediction: str = "epsilon",
    latent: torch.Tensor | None = None,
    denoise: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    harness = _harness(comfy, prediction)
    ms = _ours(prediction)
    latent = torch.zeros(2, 4, 6, 6) if latent is None else latent
    noise = prepare_noise(latent, SEED)
    theirs_sigmas = harness.ksampler_sigmas(sampler, scheduler, steps, denoise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's float32 end-point notices, theirs
        theirs = harness.sample(sampler, noise.clone(), latent.clone(), theirs_sigmas, SEED)
    sigmas = sampler_sigmas(ms, sampler, scheduler, steps, denoise)
    ours = sample(_Denoiser(ms), noise, latent, sigmas, sampler, SEED)
    return ours, theirs


# --------------------------------------------------------------------------- model sampling


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_model_sampling_matches(comfy: dict[str, Any], prediction: str) -> None:
    theirs, ours = comfy_model_sampling(comfy, prediction), _ours(prediction)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas, atol=0, rtol=0)
    torch.testing.assert_close(ours.log_sigmas, theirs.log_sigmas, atol=0, rtol=0)
    assert float(ours.sigma_min) == float(theirs.sigma_min)
    assert float(ours.sigma_max) == float(theirs.sigma_max)

    probe = torch.cat([ours.sigmas[::37], torch.tensor([0.02, 0.5, 3.3, 14.0, 20.0])])
    assert torch.equal(ours.timestep(probe), theirs.timestep(probe))
    t = torch.tensor([0.0, 0.5, 13.25, 500.7, 998.999, 999.0, 1200.0])
    torch.testing.assert_close(ours.sigma(t), theirs.sigma(t), atol=0, rtol=0)
    for percent in (-0.1, 0.0, 0.1, 0.35, 0.9, 1.0):
        assert ours.percent_to_sigma(percent) == theirs.percent_to_sigma(percent)

    gen = torch.Generator().manual_seed(3)
    x, out = torch.randn(3, 4, 5, 5, generator=gen), torch.randn(3, 4, 5, 5, generator=gen)
    latent = torch.randn(3, 4, 5, 5, generator=gen)
    for sigma in (torch.tensor(2.5), torch.tensor([0.1, 3.0, 14.6])):
        torch.testing.assert_close(
            ours.calculate_input(sigma, x), theirs.calculate_input(sigma, x), atol=0, rtol=0
        )
        torch.testing.assert_close(
            ours.calculate_denoised(sigma, out, x),
            theirs.calculate_denoised(sigma, out, x),
            atol=0,
            rtol=0,
        )
        for max_denoise in (False, True):
            torch.testing.assert_close(
                ours.noise_scaling(sigma, out, latent, max_denoise),
                theirs.noise_scaling(sigma, out.clone(), latent, max_denoise),
                atol=0,
                rtol=0,
            )
        assert torch.equal(ours.inverse_noise_scaling(sigma, x), x)


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_schedules_match(comfy: dict[str, Any], scheduler: str) -> None:
    theirs, ours = comfy_model_sampling(comfy), _ours()
    for steps in (1, 2, 3, 4, 7, 10, 20, 33, 100):
        expected = comfy["samplers"].calculate_sigmas(theirs, scheduler, steps)
        got = calculate_sigmas(ours, scheduler, steps)
        if scheduler == "kl_optimal" and steps == 1:
            # ComfyUI divides by zero here; ours goes from sigma_max to 0 in one step.
            assert torch.isnan(expected[0])
            assert got.tolist() == [float(ours.sigma_max), 0.0]
            continue
        assert got.dtype == torch.float32
        assert float(got[-1]) == 0.0 or scheduler == "linear_quadratic"
        torch.testing.assert_close(got, expected, **TOLERANCE, msg=f"{scheduler} x {steps}")


def test_required_names_are_offered() -> None:
    assert set(REQUIRED_SAMPLERS) <= set(SAMPLER_NAMES)
    assert set(REQUIRED_SCHEDULERS) <= set(SCHEDULER_NAMES)


def test_names_follow_comfyui_order(comfy: dict[str, Any]) -> None:
    theirs_samplers = list(comfy["samplers"].KSampler.SAMPLERS)
    theirs_schedulers = list(comfy["samplers"].KSampler.SCHEDULERS)
    assert list(SCHEDULER_NAMES) == [s for s in theirs_schedulers if s in SCHEDULER_NAMES]
    assert list(SAMPLER_NAMES) == [s for s in theirs_samplers if s in SAMPLER_NAMES]


@pytest.mark.parametrize("sampler", ["euler", "dpm_2", "uni_pc", "lms"])
@pytest.mark.parametrize("scheduler", ["normal", "karras", "simple", "ddim_uniform"])
def test_ksampler_sigmas_match(comfy: dict[str, Any], sampler: str, scheduler: str) -> None:
    harness, ours = _harness(comfy), _ours()
    for steps in (1, 4, 10):
        for denoise in (1.0, 0.75, 0.5, 0.33, 0.0):
            expected = harness.ksampler_sigmas(sampler, scheduler, steps, denoise)
            got = sampler_sigmas(ours, sampler, scheduler, steps, denoise)
            torch.testing.assert_close(got, expected.float(), **TOLERANCE)


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize("batch_index", [None, [0], [2, 0, 2], [5, 1]])
def test_prepare_noise_matches(comfy: dict[str, Any], batch_index: list[int] | None) -> None:
    size = 1 if batch_index is None else len(batch_index)
    latent = torch.zeros(max(size, 2) if batch_index is None else size, 4, 7, 5)
    expected = comfy["sample"].prepare_noise(latent, 99, batch_index)
    torch.testing.assert_close(prepare_noise(latent, 99, batch_index), expected, atol=0, rtol=0)


def test_prepare_noise_leaves_the_global_generator_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    prepare_noise(torch.zeros(1, 4, 4, 4), 123)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_sampler_matches(comfy: dict[str, Any], sampler: str, scheduler: str) -> None:
    ours, theirs = _run_both(comfy, sampler, scheduler, 5)
    if (sampler, scheduler) == ("lms", "linear_quadratic"):
        # This schedule's first steps are tiny next to its last: the multistep weights reach
        # thousands, and ComfyUI integrates them numerically in float32 (ours are exact), so
        # the two agree only to about 1e-4 here.
        torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=0)
    else:
        torch.testing.assert_close(ours, theirs, **TOLERANCE)
    assert torch.isfinite(ours).all() and ours.abs().max() < 10


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
@pytest.mark.parametrize("steps", [1, 2, 3, 12])
def test_sampler_step_counts_match(comfy: dict[str, Any], sampler: str, steps: int) -> None:
    ours, theirs = _run_both(comfy, sampler, "karras", steps)
    torch.testing.assert_close(ours, theirs, **TOLERANCE)


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_v_prediction_matches(comfy: dict[str, Any], sampler: str) -> None:
    ours, theirs = _run_both(comfy, sampler, "normal", 4, prediction="v_prediction")
    torch.testing.assert_close(ours, theirs, **TOLERANCE)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_sde", "uni_pc"])
@pytest.mark.parametrize("denoise", [0.6, 0.3])
def test_img2img_matches(comfy: dict[str, Any], sampler: str, denoise: float) -> None:
    latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(11))
    ours, theirs = _run_both(comfy, sampler, "karras", 6, latent=latent, denoise=denoise)
    torch.testing.assert_close(ours, theirs, **TOLERANCE)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "uni_pc", "heun"])
def test_callback_reports_each_step_like_comfyui(comfy: dict[str, Any], sampler: str) -> None:
    harness, ms = _harness(comfy), _ours()
    latent = torch.zeros(1, 4, 6, 6)
    noise = prepare_noise(latent, SEED)
    sigmas = sampler_sigmas(ms, sampler, "normal", 6)
    theirs: list[tuple[int, torch.Tensor]] = []
    comfy_sampler = comfy["samplers"].sampler_object(sampler)
    comfy_sampler.sample(
        harness.guider(),
        harness.ksampler_sigmas(sampler, "normal", 6),
        {"model_options": {}, "seed": SEED},
        lambda i, denoised, x, total: theirs.append((i, denoised.clone())),
        noise.clone(),
        latent.clone(),
        None,
        True,
    )
    ours: list[tuple[int, torch.Tensor]] = []
    sample(
        _Denoiser(ms), noise, latent, sigmas, sampler, SEED,
        callback=lambda i, x, denoised: ours.append((i, denoised.clone())),
    )  # fmt: skip
    assert [i for i, _ in ours] == [i for i, _ in theirs] == list(range(len(sigmas) - 1))
    for (_, a), (_, b) in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE)


# --------------------------------------------------------------------------- KSampler flow


class _Captured(Exception):
    """Raised by the stand-in for ComfyUI's sampling call, carrying what it was given."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        super().__init__("captured")
        self.sigmas = sigmas


@pytest.mark.parametrize(
    ("start", "last", "full"),
    [(None, None, False), (0, 3, False), (0, 3, True), (2, None, False), (3, 6, True),
     (2, 100, False), (6, None, False), (9, 4, True)],
)  # fmt: skip
def test_start_and_end_steps_match(
    comfy: dict[str, Any], monkeypatch: pytest.MonkeyPatch, start: Any, last: Any, full: bool
) -> None:
    """KSamplerAdvanced's step window: ComfyUI's own KSampler decides the sigmas (its sampling
    call is intercepted), and both sides then sample them."""
    samplers = comfy["samplers"]

    def intercept(*args: Any, **kwargs: Any) -> Any:
        # comfy.samplers.sample(model, noise, positive, negative, cfg, device, sampler, sigmas..)
        raise _Captured(args[7].clone())

    monkeypatch.setattr(samplers, "sample", intercept)
    harness, ms = _harness(comfy), _ours()
    latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(2)) * 0.1
    noise = prepare_noise(latent, SEED)
    ksampler = samplers.KSampler(harness.patcher(), 6, "cpu", sampler="euler", scheduler="karras")
    try:
        result = ksampler.sample(
            noise, None, None, 7.0, latent_image=latent, start_step=start, last_step=last,
            force_full_denoise=full, seed=SEED,
        )  # fmt: skip
    except _Captured as captured:
        theirs = harness.sample("euler", noise.clone(), latent.clone(), captured.sigmas, SEED)
    else:
        theirs = result  # ComfyUI returned the latent without sampling
    ours = sample(
        _Denoiser(ms), noise, latent, sampler_sigmas(ms, "euler", "karras", 6), "euler", SEED,
        start_step=start, last_step=last, force_full_denoise=full,
    )  # fmt: skip
    torch.testing.assert_close(ours, theirs, **TOLERANCE)


def test_add_noise_off_continues_from_the_latent(comfy: dict[str, Any]) -> None:
    """KSamplerAdvanced with add_noise off: ComfyUI samples with all-zero noise."""
    harness, ms = _harness(comfy), _ours()
    latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(4)) * 3
    sigmas = sampler_sigmas(ms, "dpmpp_2m", "karras", 8)[3:]
    theirs = harness.sample("dpmpp_2m", torch.zeros_like(latent), latent.clone(), sigmas, SEED)
    noise = prepare_noise(latent, SEED)
    ours = sample(_Denoiser(ms), noise, latent, sigmas, "dpmpp_2m", SEED, add_noise=False)
    torch.testing.assert_close(ours, theirs, **TOLERANCE)


@pytest.mark.parametrize("sampler", ["euler", "ddim", "euler_ancestral"])
def test_denoise_mask_matches(comfy: dict[str, Any], sampler: str) -> None:
    harness, ms = _harness(comfy), _ours()
    latent = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(8))
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 2:5, 1:4] = 1.0
    noise = prepare_noise(latent, SEED)
    sigmas = sampler_sigmas(ms, sampler, "normal", 5, 0.8)

    class Model:  # ComfyUI's model object, as far as masked sampling reaches into it
        model_sampling = harness.model_sampling

        def scale_latent_inpaint(self, **kwargs: Any) -> Any:
            return comfy["model_base"].BaseModel.scale_latent_inpaint(self, **kwargs)

    guider = harness.guider()
    guider.inner_model = Model()
    comfy_sampler = comfy["samplers"].sampler_object(sampler)
    theirs = comfy_sampler.sample(
        guider, sigmas.clone(), {"model_options": {}, "seed": SEED}, None, noise.clone(),
        latent.clone(), mask.expand(1, 4, 6, 6).clone(), True,
    )  # fmt: skip
    ours = sample(_Denoiser(ms), noise, latent, sigmas, sampler, SEED, denoise_mask=mask)
    torch.testing.assert_close(ours, theirs, **TOLERANCE)


def test_cfg_combine_matches(comfy: dict[str, Any]) -> None:
    gen = torch.Generator().manual_seed(9)
    cond, uncond, x = (torch.randn(2, 4, 3, 3, generator=gen) for _ in range(3))
    for scale in (0.0, 1.0, 3.5, 8.0):
        expected = comfy["samplers"].cfg_function(None, cond, uncond, scale, x, torch.ones(2))
        torch.testing.assert_close(cfg_combine(cond, uncond, scale), expected, atol=0, rtol=0)
    # At cfg 1 ComfyUI skips the unconditional pass; its (empty) result is all zeros.
    skipped = comfy["samplers"].cfg_function(None, cond, torch.zeros_like(cond), 1.0, x, None)
    torch.testing.assert_close(cfg_combine(cond, None, 1.0), skipped, atol=0, rtol=0)
