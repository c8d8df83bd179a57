"""The scheduler base classes: config handling, step bookkeeping and ``add_noise``.

A scheduler has no weights, only a config. Configs follow diffusers' rules so that a
``scheduler_config.json`` written by diffusers loads here unchanged and swapping one scheduler
for another (``EulerDiscreteScheduler.from_config(pndm.config)``) keeps the training noise
schedule while taking the new scheduler's own defaults for everything else.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

import numpy as np
import torch

from .schedule import (
    beta_sigmas,
    broadcast_to,
    exponential_sigmas,
    karras_sigmas,
    make_betas,
    rescale_zero_terminal_snr,
    sigmas_to_timesteps,
    threshold_sample,
)

CONFIG_NAME = "scheduler_config.json"

# What ``step`` accepts as its source of randomness: one generator, or one per batch item.
NoiseGenerator: TypeAlias = torch.Generator | list[torch.Generator] | None

# The training noise schedule every scheduler's config starts with (diffusers' defaults);
# a class merges it first into its own ``defaults`` so key order matches diffusers.
TRAINING_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
}

# How ``Scheduler._clip_x0`` bounds the predicted x_0, for the samplers that offer it.
X0_CLIPPING_DEFAULTS: dict[str, Any] = {
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
}

# The sigma respacing switches read by ``IndexedScheduler._reshape_sigmas``.
SIGMA_SPACING_DEFAULTS: dict[str, Any] = {
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}


@dataclass
class SchedulerOutput:
    """What ``step`` returns: the less noisy sample, and the clean-sample estimate if any."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class SchedulerConfig(dict):
    """A read-only dict with attribute access, so algorithms read ``self.config.steps_offset``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a scheduler config is read-only; build a new one with from_config")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _readonly  # type: ignore[assignment]


def read_scheduler_config(path: str | Path) -> dict[str, Any]:
    """Read a ``scheduler_config.json`` given the file, its folder, or a pipeline folder."""
    path = Path(path)
    for candidate in (path, path / CONFIG_NAME, path / "scheduler" / CONFIG_NAME):
        if candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8"))
    raise FileNotFoundError(f"no {CONFIG_NAME} at {path}")


class Scheduler(ABC):
    """Config and noise schedule common to all schedulers.

    Subclasses list their config keys and defaults in ``defaults`` (diffusers' ``__init__``
    keywords, same names and values) and build their own state in ``_setup``.
    """

    defaults: ClassVar[dict[str, Any]] = {}
    beta_schedules: ClassVar[tuple[str, ...]] = ("linear", "scaled_linear", "squaredcos_cap_v2")
    order: ClassVar[int] = 1
    # Sigma-parameterised schedulers keep the terminal alpha_bar away from exactly zero.
    floor_terminal_alpha: ClassVar[bool] = False

    def __init__(self, **config: Any) -> None:
        public = {k: v for k, v in config.items() if not k.startswith("_")}
        unknown = sorted(set(public) - set(self.defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no config option(s) {unknown}")
        values = {k: copy.deepcopy(public.get(k, default)) for k, default in self.defaults.items()}
        internal: dict[str, Any] = {k: v for k, v in config.items() if k.startswith("_")}
        internal.update(values)
        used_defaults = [k for k in self.defaults if k not in public]
        if used_defaults:
            # Remembered so that from_config to another class takes that class's defaults.
            internal["_use_default_values"] = used_defaults
        internal["_class_name"] = type(self).__name__
        self._config = SchedulerConfig(internal)
        spacings = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
        if sum(bool(self.config.get(k)) for k in spacings) > 1:
            raise ValueError(f"use only one of {', '.join(spacings)}")

        self.betas = make_betas(self.config, self.beta_schedules)
        if self.config.get("rescale_betas_zero_snr"):
            self.betas = rescale_zero_terminal_snr(self.betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if self.config.get("rescale_betas_zero_snr") and self.floor_terminal_alpha:
            self.alphas_cumprod[-1] = 2**-24
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._setup()

    @abstractmethod
    def _setup(self) -> None:
        """Build the scheduler's own state (tables, history) from ``self.config``."""

    @abstractmethod
    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        """Lay out the ``num_inference_steps`` denoising steps and forget any previous run."""

    @abstractmethod
    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, **options: Any
    ) -> SchedulerOutput:
        """Move ``sample`` one step towards less noise, given the model's output at ``timestep``."""

    # ---------------------------------------------------------------- config
    @property
    def config(self) -> SchedulerConfig:
        return self._config

    def _update_config(self, **values: Any) -> None:
        self._config = SchedulerConfig({**self._config, **values})

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> Scheduler:
        """Build from another scheduler's config, with diffusers' semantics.

        Keys the source took from its own defaults are dropped, so this class uses its own
        defaults for them; keys this class does not know are ignored for construction but kept
        in the config (so a later swap back still sees them).
        """
        used_defaults = set(config.get("_use_default_values", []))
        source = {
            k: v for k, v in config.items() if k not in used_defaults and k != "_use_default_values"
        }
        unknown = sorted(set(overrides) - set(cls.defaults))
        if unknown:
            raise TypeError(f"{cls.__name__} has no config option(s) {unknown}")
        init = {k: source[k] for k in cls.defaults if k in source}
        init.update(overrides)
        scheduler = cls(**init)
        hidden = {k: v for k, v in source.items() if k not in init}
        hidden["_class_name"] = cls.__name__
        scheduler._update_config(**hidden)
        return scheduler

    @classmethod
    def from_pretrained(cls, path: str | Path, subfolder: str | None = None) -> Scheduler:
        """Load from a ``scheduler_config.json`` (a file, its folder, or a pipeline folder)."""
        path = Path(path) / subfolder if subfolder else Path(path)
        return cls.from_config(read_scheduler_config(path))

    def to_json_string(self) -> str:
        """The config as diffusers writes it (arrays as lists, no default-tracking key)."""
        saved = {k: v for k, v in self.config.items() if k != "_use_default_values"}

        def plain(value: Any) -> Any:
            return value.tolist() if hasattr(value, "tolist") else str(value)

        return json.dumps(dict(sorted(saved.items())), indent=2, default=plain) + "\n"

    def save_config(self, folder: str | Path) -> Path:
        target = Path(folder) / CONFIG_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.to_json_string(), encoding="utf-8")
        return target

    @property
    def compatibles(self) -> list[type[Scheduler]]:
        """Every scheduler that can replace this one on the same model (all share one config)."""
        # The registry lives with the package, which imports every scheduler module.
        from . import SCHEDULERS

        return list(SCHEDULERS.values())

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    # ---------------------------------------------------------------- shared helpers
    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Most schedulers feed the model the sample unchanged."""
        return sample

    def _x0_from_alpha_prod(
        self, model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor
    ) -> torch.Tensor:
        """x_0 from the model output at a timestep with cumulative alpha ``alpha_prod_t``."""
        beta_prod_t = 1 - alpha_prod_t
        prediction = self.config.prediction_type
        if prediction == "epsilon":
            return (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        if prediction == "sample":
            return model_output
        if prediction == "v_prediction":
            return alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
        raise ValueError(f"prediction_type {prediction!r} must be epsilon, sample or v_prediction")

    def _clip_x0(self, pred_x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding if configured, else clipping to ``clip_sample_range``."""
        if self.config.thresholding:
            return threshold_sample(
                pred_x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value
            )
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            return pred_x0.clamp(-limit, limit)
        return pred_x0

    def _add_noise_by_alphas_cumprod(
        self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """q(x_t | x_0) = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, at integer timesteps."""
        self.alphas_cumprod = self.alphas_cumprod.to(device=original.device)
        alphas_cumprod = self.alphas_cumprod.to(dtype=original.dtype)
        timesteps = timesteps.to(original.device)
        sqrt_alpha = broadcast_to(alphas_cumprod[timesteps] ** 0.5, original)
        sqrt_one_minus_alpha = broadcast_to((1 - alphas_cumprod[timesteps]) ** 0.5, original)
        return sqrt_alpha * original + sqrt_one_minus_alpha * noise


class IndexedScheduler(Scheduler):
    """A scheduler that walks a precomputed sigma table with a step counter.

    The counter starts at the index of the first timestep it is given (or at ``begin_index``,
    which img2img sets when it enters the schedule part-way).
    """

    # Solvers treat an unknown timestep as the last one instead of failing.
    unknown_timestep_is_last: ClassVar[bool] = False

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def index_for_timestep(
        self, timestep: Any, schedule_timesteps: torch.Tensor | None = None
    ) -> int:
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        candidates = (schedule == timestep).nonzero()
        if len(candidates) == 0 and self.unknown_timestep_is_last:
            return len(self.timesteps) - 1
        # A repeated timestep (Heun, KDPM2) is entered at its second occurrence, so that a
        # schedule started part-way (img2img) does not skip a step.
        return candidates[1 if len(candidates) > 1 else 0].item()

    def _host(self, table: torch.Tensor) -> list[float]:
        """A schedule table (``sigmas``) as host floats, read once per schedule: the step's
        Python-side decisions and coefficients use these, never a read of a table entry."""
        cached: tuple[torch.Tensor, list[float]] | None = self.__dict__.get("_host_table")
        if cached is None or cached[0] is not table:
            cached = (table, table.tolist())
            self._host_table = cached
        return cached[1]

    def _reset_step_index(self) -> None:
        """A new schedule: the counter restarts from the first timestep ``step`` is given."""
        self._step_index = None
        self._begin_index = None

    def _init_step_index(self, timestep: Any) -> None:
        if self._begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _sigmas_at(self, original: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The table sigma of each timestep, shaped to broadcast over ``original``."""
        sigmas = self.sigmas.to(device=original.device, dtype=original.dtype)
        schedule = self.timesteps.to(original.device)
        timesteps = timesteps.to(original.device)
        if self.begin_index is None:
            indices = [self.index_for_timestep(t, schedule) for t in timesteps]
        elif self.step_index is not None:
            indices = [self.step_index] * timesteps.shape[0]
        else:
            indices = [self.begin_index] * timesteps.shape[0]
        return broadcast_to(sigmas[indices], original)

    def _sigma_table(
        self, sigmas: np.ndarray, final_sigmas_type: str = "zero", respaced_end: Any = None
    ) -> torch.Tensor:
        """The float32 table ``step`` walks: the grid's sigmas and the one after the last step.

        That last sigma is 0 (``zero``: end fully denoised) or the smallest sigma (``sigma_min``):
        the training schedule's, or ``respaced_end``, which UniPC and DEIS pass to end a respaced
        grid (Karras...) on its own last sigma, as diffusers does.
        """
        if final_sigmas_type == "zero":
            final = 0
        elif final_sigmas_type != "sigma_min":
            raise ValueError("final_sigmas_type must be 'zero' or 'sigma_min'")
        elif respaced_end is not None:
            final = respaced_end
        else:
            ac0 = self.alphas_cumprod[0]
            final = ((1 - ac0) / ac0) ** 0.5
        return torch.from_numpy(np.concatenate([sigmas, [final]]).astype(np.float32))

    def _reshape_sigmas(
        self, sigmas: np.ndarray, log_sigmas: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Apply the config's sigma spacing (Karras, exponential, beta), with matching timesteps.

        Returns the input unchanged and ``None`` timesteps when no respacing is configured.
        """
        # Only options this class declares count: a config carried over from another
        # scheduler (DPM++ with Karras sigmas -> Euler ancestral) keeps keys this class
        # ignores in diffusers, and must be ignored here too.
        declared = type(self).defaults
        config = {k: v for k, v in self.config.items() if k in declared}
        lo, hi = config.get("sigma_min"), config.get("sigma_max")
        if config.get("use_karras_sigmas"):
            sigmas = karras_sigmas(sigmas, n, lo, hi)
        elif config.get("use_exponential_sigmas"):
            sigmas = exponential_sigmas(sigmas, n, lo, hi)
        elif config.get("use_beta_sigmas"):
            sigmas = beta_sigmas(sigmas, n, lo, hi)
        else:
            return sigmas, None
        return sigmas, sigmas_to_timesteps(sigmas, log_sigmas)
