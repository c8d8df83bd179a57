"""Noise schedulers compatible with Stable Diffusion 1.x, numerically equal to diffusers'.

``SCHEDULERS`` maps diffusers class names to our classes, so a ``scheduler_config.json``'s
``_class_name`` picks the scheduler, and any one can be swapped for another with
``scheduler_from_config(old.config, "EulerDiscreteScheduler")``. It is the one list of
schedulers: ``SCHEDULER_NAMES`` and every scheduler's ``compatibles`` come from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import (
    CONFIG_NAME,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
    read_scheduler_config,
)
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .deis import DEISMultistepScheduler
from .dpm_multistep import DPMSolverMultistepScheduler
from .dpm_singlestep import DPMSolverSinglestepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .unipc import UniPCMultistepScheduler

# In the order the Stable Diffusion 1.5 docs list its compatible schedulers: the order to
# offer them in.
SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.__name__: cls
    for cls in (
        LMSDiscreteScheduler,
        UniPCMultistepScheduler,
        KDPM2DiscreteScheduler,
        DEISMultistepScheduler,
        EulerDiscreteScheduler,
        DPMSolverMultistepScheduler,
        DDPMScheduler,
        DPMSolverSinglestepScheduler,
        KDPM2AncestralDiscreteScheduler,
        HeunDiscreteScheduler,
        PNDMScheduler,
        EulerAncestralDiscreteScheduler,
        DDIMScheduler,
    )
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)


def scheduler_from_config(config: Mapping[str, Any], class_name: str | None = None) -> Scheduler:
    """Build the scheduler named by ``class_name`` (default: the config's ``_class_name``)."""
    name = class_name or config.get("_class_name")
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(config)


def load_scheduler(path: str | Path, class_name: str | None = None) -> Scheduler:
    """Load a scheduler from a ``scheduler_config.json`` (file, folder or pipeline folder)."""
    return scheduler_from_config(read_scheduler_config(path), class_name)


__all__ = [
    "CONFIG_NAME",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "load_scheduler",
    "read_scheduler_config",
    "scheduler_from_config",
    *SCHEDULERS,
]
