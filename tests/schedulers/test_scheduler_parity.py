"""Our schedulers against diffusers' on identical configs, seeds and a deterministic toy model.

For every scheduler, step count and prediction type: the timestep and sigma tables must be
equal, and a full denoising run (stochastic schedulers drawing from identically seeded
generators) must end on the same sample within 1e-5.
"""

from __future__ import annotations

import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("scipy")  # diffusers' LMS integrates its coefficients with scipy

from nodes.diffusion.schedulers import SCHEDULERS  # noqa: E402
from tests.support.model_configs import SD15_SCHEDULER  # noqa: E402

STOCHASTIC = {
    "DDPMScheduler",
    "EulerAncestralDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
}
STEP_COUNTS = [1, 2, 7, 20, 50]
PREDICTIONS = ["epsilon", "v_prediction"]
SHAPE = (2, 4, 8, 8)
TOLERANCE = 1e-5
MAX_ERRORS: dict[str, float] = {}


_ALPHAS_CUMPROD = torch.cumprod(1 - torch.linspace(
    SD15_SCHEDULER["beta_start"] ** 0.5, SD15_SCHEDULER["beta_end"] ** 0.5,
    SD15_SCHEDULER["num_train_timesteps"], dtype=torch.float64) ** 2, dim=0)


def toy_model(sample: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
    """A smooth deterministic stand-in for a UNet that denoises towards 0.5 * tanh(input).

    It reads the (unit-variance) model input and the timestep like a real model, and answers
    in the requested parameterisation, so the runs end on bounded, image-like samples.
    """
    tf = torch.as_tensor(t, dtype=torch.float64).clamp(0, 999)
    low = tf.floor().long()
    high = (low + 1).clamp(max=999)
    abar = torch.lerp(_ALPHAS_CUMPROD[low], _ALPHAS_CUMPROD[high], tf - low)
    x = sample.double()
    x0 = 0.5 * torch.tanh(x)
    eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
    if prediction == "sample":
        return x0.float()
    out = eps if prediction == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
    return out.float()


def denoise(
    scheduler, steps: int, stochastic: bool, ours: bool, step_kwargs: dict | None = None
) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    sample = sample * scheduler.init_noise_sigma
    if stochastic == "per-image":  # one generator per image (diffusers' efficiency guide)
        generator = [torch.Generator().manual_seed(10 + i) for i in range(SHAPE[0])]
    else:
        generator = torch.Generator().manual_seed(1)
    extra = {"generator": generator} if (stochastic or ours) else {}
    extra.update(step_kwargs or {})
    prediction = scheduler.config["prediction_type"]
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        output = toy_model(model_input, t, prediction)
        sample = scheduler.step(output, t, sample, **extra).prev_sample
    return sample


def build_pair(name: str, config: dict):
    reference = getattr(diffusers, name).from_config(config)
    ours = SCHEDULERS[name].from_config(config)
    return reference, ours


def assert_same_tables(reference, ours) -> None:
    assert ours.timesteps.dtype == reference.timesteps.dtype
    torch.testing.assert_close(ours.timesteps, reference.timesteps, rtol=0, atol=0)
    if hasattr(reference, "sigmas") and isinstance(reference.sigmas, torch.Tensor):
        torch.testing.assert_close(ours.sigmas, reference.sigmas, rtol=0, atol=0, equal_nan=True)
    init_ref, init_ours = reference.init_noise_sigma, ours.init_noise_sigma
    assert float(init_ours) == pytest.approx(float(init_ref), rel=1e-7)


def compare_run(
    name: str,
    config: dict,
    steps: int,
    step_kwargs: dict | None = None,
    stochastic=None,
    pair: tuple | None = None,
) -> float:
    """Denoise with both; ``pair`` reuses built schedulers (set_timesteps must reset them)."""
    if stochastic is None:
        stochastic = name in STOCHASTIC or str(config.get("algorithm_type")).startswith("sde")
    reference, ours = pair or build_pair(name, config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = denoise(reference, steps, stochastic, False, step_kwargs)
        except Exception as exc:  # diffusers rejects this setting: so must we, the same way
            with pytest.raises(type(exc)):
                denoise(ours, steps, stochastic, True, step_kwargs)
            return 0.0
    got = denoise(ours, steps, stochastic, True, step_kwargs)
    assert_same_tables(reference, ours)
    assert torch.isfinite(expected).all()
    error = (got - expected).abs().max().item()
    MAX_ERRORS[name] = max(MAX_ERRORS.get(name, 0.0), error)
    assert error <= TOLERANCE, f"{name} {steps} steps: max abs error {error}"
    return error


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_full_run_matches_diffusers(name: str, prediction: str) -> None:
    config = {**SD15_SCHEDULER, "prediction_type": prediction}
    pair = build_pair(name, config)  # reused: each set_timesteps must start afresh
    for steps in STEP_COUNTS:
        compare_run(name, config, steps, pair=pair)


KARRAS = [
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
]


@pytest.mark.parametrize("name", KARRAS)
def test_karras_sigmas_match_diffusers(name: str) -> None:
    config = {**SD15_SCHEDULER, "use_karras_sigmas": True}
    pair = build_pair(name, config)
    for steps in (2, 7, 20):
        compare_run(name, config, steps, pair=pair)
    # Karras spacing really changed the table (not silently ignored).
    plain = SCHEDULERS[name].from_config(SD15_SCHEDULER)
    karras = SCHEDULERS[name].from_config(config)
    plain.set_timesteps(20)
    karras.set_timesteps(20)
    assert not torch.equal(plain.sigmas, karras.sigmas)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_timestep_spacings_match_diffusers(spacing: str) -> None:
    for name, cls in SCHEDULERS.items():
        if "timestep_spacing" in cls.defaults:
            compare_run(name, {**SD15_SCHEDULER, "timestep_spacing": spacing}, 7)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_class_defaults_match_diffusers(name: str) -> None:
    """Each class on its own defaults (PNDM with its Runge-Kutta warm-up, DDIM clipping...)."""
    pair = build_pair(name, {})
    for steps in (1, 4, 13):
        compare_run(name, {}, steps, pair=pair)


VARIANTS = [
    ("DDIMScheduler", {"thresholding": True, "rescale_betas_zero_snr": True}),
    ("DDIMScheduler", {"prediction_type": "sample", "timestep_spacing": "trailing"}),
    ("DDPMScheduler", {"variance_type": "fixed_large", "beta_schedule": "squaredcos_cap_v2"}),
    ("DDPMScheduler", {"variance_type": "fixed_small_log", "prediction_type": "sample"}),
    ("LMSDiscreteScheduler", {"prediction_type": "sample", "use_exponential_sigmas": True}),
    ("EulerDiscreteScheduler", {"interpolation_type": "log_linear"}),
    ("EulerDiscreteScheduler", {"final_sigmas_type": "sigma_min", "use_exponential_sigmas": True}),
    ("EulerDiscreteScheduler", {"timestep_type": "continuous", "prediction_type": "v_prediction"}),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}),
    ("EulerDiscreteScheduler", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
    ("EulerAncestralDiscreteScheduler", {"rescale_betas_zero_snr": True}),
    ("HeunDiscreteScheduler", {"clip_sample": True, "beta_schedule": "exp"}),
    ("HeunDiscreteScheduler", {"prediction_type": "sample", "use_exponential_sigmas": True}),
    ("KDPM2DiscreteScheduler", {"use_exponential_sigmas": True}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}),
    ("DPMSolverMultistepScheduler", {"solver_type": "heun", "lower_order_final": False}),
    (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    ),
    (
        "DPMSolverMultistepScheduler",
        {
            "algorithm_type": "sde-dpmsolver",
            "final_sigmas_type": "sigma_min",
            "solver_type": "heun",
        },
    ),
    ("DPMSolverMultistepScheduler", {"use_lu_lambdas": True, "euler_at_final": True}),
    ("DPMSolverMultistepScheduler", {"lambda_min_clipped": -5.1, "thresholding": True}),
    (
        "DPMSolverMultistepScheduler",
        {"use_exponential_sigmas": True, "rescale_betas_zero_snr": True},
    ),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3}),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3, "solver_type": "heun"}),
    ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    (
        "DPMSolverSinglestepScheduler",
        {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3},
    ),
    ("DEISMultistepScheduler", {"solver_order": 3}),
    ("DEISMultistepScheduler", {"use_exponential_sigmas": True, "thresholding": True}),
    ("UniPCMultistepScheduler", {"solver_order": 3}),
    (
        "UniPCMultistepScheduler",
        {"solver_type": "bh1", "predict_x0": False, "final_sigmas_type": "sigma_min"},
    ),
    ("UniPCMultistepScheduler", {"disable_corrector": [0, 1], "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}),
    ("UniPCMultistepScheduler", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
]


@pytest.mark.parametrize("name,overrides", VARIANTS)
def test_config_variants_match_diffusers(name: str, overrides: dict) -> None:
    config = {**SD15_SCHEDULER, **overrides}
    pair = build_pair(name, config)
    for steps in (3, 8, 20):
        compare_run(name, config, steps, pair=pair)


@pytest.mark.parametrize(
    "name,step_kwargs",
    [
        ("DDIMScheduler", {"eta": 1.0}),
        ("DDIMScheduler", {"eta": 0.5, "use_clipped_model_output": True}),
        ("EulerDiscreteScheduler", {"s_churn": 2.0, "s_tmin": 0.5, "s_tmax": 10.0}),
    ],
)
def test_stochastic_step_options_match_diffusers(name: str, step_kwargs: dict) -> None:
    pair = build_pair(name, SD15_SCHEDULER)
    for steps in (5, 20):
        compare_run(name, SD15_SCHEDULER, steps, step_kwargs, stochastic=True, pair=pair)


@pytest.mark.parametrize("name", sorted(STOCHASTIC) + ["DPMSolverSinglestepScheduler"])
def test_one_generator_per_image_matches_diffusers(name: str) -> None:
    config = dict(SD15_SCHEDULER)
    if name == "DPMSolverSinglestepScheduler":
        config["algorithm_type"] = "sde-dpmsolver++"
    compare_run(name, config, 10, stochastic="per-image")


def test_max_errors_stay_within_tolerance() -> None:
    """Runs last in this module: every comparison above stayed within the tolerance."""
    assert MAX_ERRORS, "no comparison ran"
    assert max(MAX_ERRORS.values()) <= TOLERANCE
