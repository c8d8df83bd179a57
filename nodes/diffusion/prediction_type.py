"""What a model predicts (noise or v), when the weights cannot say.

A single file does not record whether it was trained to predict the noise (``epsilon``) or
the velocity (``v_prediction``, SD 2.x 768 px models and some fine-tunes). Users tell it the
way the original repositories and other UIs read it: a YAML config next to the checkpoint
(``model.safetensors`` + ``model.yaml``) whose ``model.params.parameterization`` is ``"v"``.
In order, the first that applies wins:

1. an explicit ``epsilon`` / ``v_prediction`` from the caller (also for diffusers folders);
2. for a single file, its YAML (without ``parameterization`` the original code trains
   ``eps``, so such a YAML means epsilon; SGM YAMLs name a ``VScaling`` denoiser instead);
3. the scheduler config's own value (a folder's, or the family default of a single file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .names import PREDICTION_TYPES
from .storage import WeightsError

_PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction", "epsilon": "epsilon",
                      "v_prediction": "v_prediction"}


def check_prediction_type(value: str) -> str:
    if value not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                         f"not {value!r}")
    return value


def yaml_beside(checkpoint: Path) -> Path | None:
    """``<stem>.yaml`` (or ``.yml``) in the checkpoint's folder, if there is one."""
    for suffix in (".yaml", ".yml"):
        candidate = checkpoint.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def prediction_from_yaml(path: Path) -> str:
    """The prediction type an LDM/SGM training config declares."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise WeightsError(f"{path}: unreadable model config ({exc})") from exc
    params = _mapping(_mapping(_mapping(document).get("model")).get("params"))
    if "parameterization" in params:
        value = str(params["parameterization"])
        if value not in _PARAMETERIZATIONS:
            raise WeightsError(f"{path}: parameterization {value!r} is not supported "
                               "(only 'eps' and 'v')")
        return _PARAMETERIZATIONS[value]
    scaling = _mapping(_mapping(_mapping(params.get("denoiser_config")).get("params"))
                       .get("scaling_config"))
    if str(scaling.get("target", "")).endswith(".VScaling"):
        return "v_prediction"
    return "epsilon"


def resolve_prediction_type(requested: str, config: dict[str, Any],
                            checkpoint: Path | None = None) -> dict[str, Any]:
    """``config`` with its ``prediction_type`` decided as the module docstring says."""
    check_prediction_type(requested)
    out = dict(config)
    if requested != "auto":
        out["prediction_type"] = requested
        return out
    found = yaml_beside(checkpoint) if checkpoint is not None else None
    if found is not None:
        out["prediction_type"] = prediction_from_yaml(found)
    return out
