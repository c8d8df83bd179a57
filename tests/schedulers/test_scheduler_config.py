"""Config swapping, loading, add_noise, img2img entry and state reset, against diffusers."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("scipy")

from nodes.diffusion.schedulers import (  # noqa: E402
    SCHEDULERS,
    load_scheduler,
    scheduler_from_config,
)
from nodes.diffusion.schedulers.lms import lagrange_integral  # noqa: E402
from tests.support.model_configs import SD15_SCHEDULER  # noqa: E402

# SD 2.x-style v-prediction config: every explicitly set training key must survive swaps.
TRAINING = {**SD15_SCHEDULER, "prediction_type": "v_prediction"}
SHARED = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type")
SEED_LIST = {
    "LMSDiscreteScheduler", "UniPCMultistepScheduler", "KDPM2DiscreteScheduler",
    "DEISMultistepScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DDPMScheduler", "DPMSolverSinglestepScheduler", "KDPM2AncestralDiscreteScheduler",
    "HeunDiscreteScheduler", "PNDMScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler",
}  # fmt: skip


def comparable(config) -> dict:
    """A config without bookkeeping that legitimately differs (version, class name, order)."""
    out = {k: v for k, v in dict(config).items() if k not in ("_class_name", "_diffusers_version")}
    out["_use_default_values"] = sorted(out.get("_use_default_values", []))
    return out


def test_the_thirteen_schedulers_of_the_seeds() -> None:
    assert set(SCHEDULERS) == SEED_LIST
    for name, cls in SCHEDULERS.items():
        ours, reference = cls(), getattr(diffusers, name)()
        assert comparable(ours.config) == comparable(reference.config), name
        assert ours.config["_class_name"] == name
        assert {c.__name__ for c in ours.compatibles} == SEED_LIST
        assert SEED_LIST <= {c.__name__ for c in reference.compatibles}
        assert ours.order == reference.order
        assert hasattr(ours, "set_begin_index") == hasattr(reference, "set_begin_index")


_REFERENCES: dict[tuple[str, str], object] = {}


def reference_from_config(name: str, config) -> object:
    """diffusers' ``from_config``, built once per distinct effective input.

    What diffusers builds depends only on the source keys that were not defaults (the class
    name is overwritten), so targets built from equivalent sources are shared; this keeps the
    169 pairs fast (diffusers' KDPM2 and LMS constructors are slow).
    """
    used = set(config.get("_use_default_values", []))
    skip = used | {"_use_default_values", "_class_name", "_diffusers_version"}
    effective = {k: v for k, v in config.items() if k not in skip}
    key = (name, json.dumps(effective, sort_keys=True, default=str))
    if key not in _REFERENCES:
        _REFERENCES[key] = getattr(diffusers, name).from_config(config)
    return _REFERENCES[key]


@pytest.mark.parametrize("source", sorted(SCHEDULERS))
def test_from_config_between_every_pair_matches_diffusers(source: str) -> None:
    ours_source = SCHEDULERS[source].from_config(TRAINING)
    ref_source = getattr(diffusers, source).from_config(TRAINING)
    assert comparable(ours_source.config) == comparable(ref_source.config)
    for target, cls in SCHEDULERS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = cls.from_config(ours_source.config)
            reference = reference_from_config(target, ref_source.config)
        assert comparable(ours.config) == comparable(reference.config), (source, target)
        assert ours.config["_class_name"] == target
        for key in SHARED:  # the training schedule always survives the swap
            assert ours.config[key] == TRAINING[key], (source, target, key)
        if "steps_offset" in cls.defaults:
            assert ours.config["steps_offset"] == 1
        # Swapping back restores the source exactly.
        back = SCHEDULERS[source].from_config(ours.config)
        assert comparable(back.config) == comparable(ours_source.config), (source, target)


def test_scheduler_from_config_picks_the_class_and_rejects_unknown_names() -> None:
    scheduler = scheduler_from_config(TRAINING)
    assert type(scheduler).__name__ == "PNDMScheduler"
    euler = scheduler_from_config(scheduler.config, "EulerDiscreteScheduler")
    assert type(euler).__name__ == "EulerDiscreteScheduler"
    assert euler.config["timestep_spacing"] == "linspace"  # Euler's default, not PNDM's
    with pytest.raises(ValueError, match="unknown scheduler"):
        scheduler_from_config(TRAINING, "FlowMatchEulerDiscreteScheduler")


def test_unknown_keys_are_ignored_but_kept_and_configs_are_read_only() -> None:
    scheduler = SCHEDULERS["DDIMScheduler"].from_config({**TRAINING, "made_up_option": 3})
    assert scheduler.config["made_up_option"] == 3
    with pytest.raises(TypeError):
        SCHEDULERS["DDIMScheduler"](made_up_option=3)
    with pytest.raises(TypeError):
        scheduler.config["beta_start"] = 0.1
    assert scheduler.config.beta_start == 0.00085


def test_loading_a_diffusers_scheduler_config_json(tmp_path) -> None:
    reference = diffusers.UniPCMultistepScheduler.from_config(TRAINING, solver_order=3)
    reference.save_config(tmp_path / "scheduler")
    ours = load_scheduler(tmp_path)  # a pipeline folder: scheduler/scheduler_config.json
    assert type(ours).__name__ == "UniPCMultistepScheduler"
    loaded = diffusers.UniPCMultistepScheduler.from_pretrained(tmp_path / "scheduler")
    assert comparable(ours.config) == comparable(loaded.config)
    assert ours.config["solver_order"] == 3
    # And the other way: what we save, diffusers loads to the same config.
    ours.save_config(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
    assert "_use_default_values" not in saved and saved["_class_name"] == "UniPCMultistepScheduler"
    again = diffusers.UniPCMultistepScheduler.from_pretrained(tmp_path / "ours")
    assert comparable(again.config) == comparable(loaded.config)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_add_noise_matches_diffusers(name: str) -> None:
    ours = SCHEDULERS[name].from_config(TRAINING)
    reference = getattr(diffusers, name).from_config(TRAINING)
    ours.set_timesteps(20)
    reference.set_timesteps(20)
    generator = torch.Generator().manual_seed(3)
    original = torch.randn(2, 4, 8, 8, generator=generator)
    noise = torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = reference.timesteps[torch.tensor([1, 6])]
    expected = reference.add_noise(original, noise, timesteps)
    got = ours.add_noise(original, noise, timesteps)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, original)


def img2img(scheduler, strength: float = 0.6, steps: int = 10) -> torch.Tensor:
    """diffusers' img2img entry: skip the noisiest steps, noise the image to where it starts."""
    scheduler.set_timesteps(steps)
    start = steps - min(int(steps * strength), steps)
    timesteps = scheduler.timesteps[start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start * scheduler.order)
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(2, 4, 8, 8, generator=generator).tanh()
    noise = torch.randn(2, 4, 8, 8, generator=generator)
    sample = scheduler.add_noise(image, noise, timesteps[:1].repeat(2))
    step_generator = torch.Generator().manual_seed(6)
    for t in timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        output = 0.3 * torch.tanh(model_input) + 0.001 * torch.as_tensor(t, dtype=torch.float32)
        kwargs = {}
        if "generator" in scheduler.step.__code__.co_varnames:
            kwargs["generator"] = step_generator
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sample = scheduler.step(output, t, sample, **kwargs).prev_sample
    return sample


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_img2img_entry_part_way_matches_diffusers(name: str) -> None:
    config = {**TRAINING, "prediction_type": "epsilon"}
    expected = img2img(getattr(diffusers, name).from_config(config))
    got = img2img(SCHEDULERS[name].from_config(config))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_set_timesteps_resets_all_state(name: str) -> None:
    """A second run on the same scheduler equals a run on a fresh one (history cleared)."""
    config = {**TRAINING, "prediction_type": "epsilon"}
    reused = SCHEDULERS[name].from_config(config)
    img2img(reused, strength=1.0, steps=6)  # leaves multistep history, step index, half steps
    first_half = SCHEDULERS[name].from_config(config)
    first_half.set_timesteps(6)
    if first_half.order == 2:  # stop a two-call scheduler between its two calls
        t = first_half.timesteps[0]
        first_half.step(torch.zeros(2, 4, 8, 8), t, torch.ones(2, 4, 8, 8))
    assert torch.equal(img2img(reused), img2img(SCHEDULERS[name].from_config(config)))
    assert torch.equal(img2img(first_half), img2img(SCHEDULERS[name].from_config(config)))


@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                                  "KDPM2AncestralDiscreteScheduler"])  # fmt: skip
def test_two_model_calls_per_step(name: str) -> None:
    scheduler = SCHEDULERS[name].from_config(TRAINING)
    scheduler.set_timesteps(10)
    assert scheduler.order == 2
    assert len(scheduler.timesteps) == 2 * 10 - 1  # the last step is a single Euler call
    states = []
    for t in scheduler.timesteps[:4]:
        states.append(scheduler.state_in_first_order)
        sample = torch.ones(1, 4, 8, 8)
        scheduler.step(torch.zeros_like(sample), t, scheduler.scale_model_input(sample, t))
    assert states == [True, False, True, False]


def test_lms_coefficients_equal_scipy_quadrature() -> None:
    ours = SCHEDULERS["LMSDiscreteScheduler"].from_config(TRAINING)
    reference = diffusers.LMSDiscreteScheduler.from_config(TRAINING)
    worst = 0.0
    for steps in (2, 7, 20, 50):
        ours.set_timesteps(steps)
        reference.set_timesteps(steps)
        for t in range(steps):
            order = min(t + 1, 4)
            for j in range(order):
                expected = reference.get_lms_coefficient(order, t, j)
                worst = max(worst, abs(ours.get_lms_coefficient(order, t, j) - expected))
    assert worst < 1e-6
    # Exact on a polynomial with a known integral: the basis functions sum to 1.
    nodes = [3.0, 2.0, 1.5, 1.0]
    total = sum(lagrange_integral(nodes, j, 1.0, 0.5) for j in range(4))
    assert total == pytest.approx(-0.5, abs=1e-12)


def test_pndm_step_counts_match_diffusers_including_the_rejected_ones() -> None:
    """PNDM's Runge-Kutta warm-up needs 4 steps; both implementations refuse fewer alike."""
    for skip_prk_steps in (False, True):
        for steps in (1, 2, 3, 4, 10):
            outcomes = []
            for cls in (SCHEDULERS["PNDMScheduler"], diffusers.PNDMScheduler):
                scheduler = cls(skip_prk_steps=skip_prk_steps)
                try:
                    scheduler.set_timesteps(steps)
                    outcomes.append(scheduler.timesteps.tolist())
                except ValueError:
                    outcomes.append("ValueError")
            assert outcomes[0] == outcomes[1], (skip_prk_steps, steps)
            assert (outcomes[0] == "ValueError") == (not skip_prk_steps and steps < 4)


@pytest.mark.parametrize("spacing", ["use_karras_sigmas", "use_exponential_sigmas"])
def test_a_carried_over_sigma_spacing_is_ignored_where_diffusers_ignores_it(spacing: str) -> None:
    """DPM++ with Karras sigmas swapped to Euler ancestral: diffusers' Euler ancestral has no
    such option, so its sigmas stay evenly spaced in time; a leftover key must not respace."""
    source = diffusers.DPMSolverMultistepScheduler.from_config({**SD15_SCHEDULER, spacing: True})
    ours = SCHEDULERS["EulerAncestralDiscreteScheduler"].from_config(source.config)
    reference = diffusers.EulerAncestralDiscreteScheduler.from_config(source.config)
    ours.set_timesteps(12)
    reference.set_timesteps(12)
    assert ours.config[spacing] is True  # kept for a later swap back
    torch.testing.assert_close(ours.sigmas, reference.sigmas.to(ours.sigmas.dtype))
    torch.testing.assert_close(ours.timesteps.double(), reference.timesteps.double())
