"""Finding and loading models: diffusers folders, single files and Hugging Face ids.

A *source* is a folder, a single checkpoint file, a name under the models directory, or an
``org/name`` id looked up in the Hugging Face cache. A name under the models directory wins
over a hub id of the same spelling, so a local copy always shadows the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .clip import load_text_encoder, load_tokenizer
from .devices import pick_device, pick_dtype
from .ldm_convert import infer_vae_config_diffusers
from .model_family import Family, detect_family
from .model_files import DEFAULT_MODELS_DIR as DEFAULT_MODELS_DIR
from .model_files import WEIGHT_FILE_SUFFIXES as WEIGHT_FILE_SUFFIXES
from .model_files import list_models as list_models
from .model_files import resolve_source as resolve_source
from .prediction_type import PREDICTION_TYPES as PREDICTION_TYPES  # the loader's choices
from .prediction_type import check_prediction_type, resolve_prediction_type
from .single_file import (
    VAE_PREFIX,
    load_single_file,
    single_file_scheduler_config,
    split_prefix,
    vae_from_ldm,
)
from .storage import WeightsError, build_from_state, find_weights, read_weights
from .unet import UNet2DConditionModel
from .unet2d import UNet2DModel
from .vae import AutoencoderKL

_UNET_CLASSES: dict[str, type[UNet2DConditionModel] | type[UNet2DModel]] = {
    "UNet2DConditionModel": UNet2DConditionModel,
    "UNet2DModel": UNet2DModel,
}


# Pipeline-level settings of SDXL's model_index.json that change how prompts are encoded.
PIPELINE_FLAGS = ("force_zeros_for_empty_prompt", "requires_aesthetics_score")


@dataclass
class Components:
    """What a loaded pipeline consists of; ``kind`` is ``"sd"`` (text-to-image in latent
    space) or ``"unet2d"`` (unconditional pixel-space DDPM: no text encoder, no VAE).

    SDXL has a second tokenizer and text encoder (OpenCLIP-G, with a projection for the
    pooled embedding); its refiner has only those, so there ``tokenizer``/``text_encoder``
    are None. ``flags`` holds the pipeline settings of ``PIPELINE_FLAGS`` it declares.
    """

    tokenizer: CLIPTokenizer | None
    text_encoder: CLIPTextModel | None
    unet: UNet2DConditionModel | UNet2DModel
    vae: AutoencoderKL | None
    scheduler_config: dict[str, Any] | None
    source: str
    kind: str
    tokenizer_2: CLIPTokenizer | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None
    flags: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable JSON ({exc})") from exc


def _component_dir(folder: Path, name: str) -> Path | None:
    """``folder/name`` when present; DDPM repositories keep their only model at the root."""
    if (folder / name / "config.json").is_file():
        return folder / name
    if name == "unet" and (folder / "config.json").is_file():
        return folder
    return None


def load_model_folder(
    folder: Path, cls: type, dtype: torch.dtype | None, device: torch.device | str
) -> Any:
    """A diffusers model folder (config.json + diffusion_pytorch_model weights)."""
    config = _read_json(folder / "config.json")
    declared = config.get("_class_name")
    if declared and declared != cls.__name__:
        raise WeightsError(f"{folder}: holds a {declared}, expected a {cls.__name__}")
    weights = find_weights(folder, ("diffusion_pytorch_model",))
    return build_from_state(lambda: cls(config), read_weights(weights), dtype, device,
                            f"{folder.name} ({cls.__name__})")


def vae_dtype(requested: str | torch.dtype, dtype: torch.dtype, config: dict[str, Any]) -> (
        torch.dtype):
    """With ``dtype="auto"``, a VAE whose config sets ``force_upcast`` stays in fp32 when
    the rest runs in fp16: SD's VAE overflows in fp16 (diffusers upcasts it the same way)."""
    if requested == "auto" and dtype == torch.float16 and config.get("force_upcast", True):
        return torch.float32
    return dtype


def _scheduler_config(folder: Path) -> dict[str, Any] | None:
    for candidate in (folder / "scheduler" / "scheduler_config.json",
                      folder / "scheduler_config.json"):
        if candidate.is_file():
            return _read_json(candidate)
    return None


def _unet_class_name(folder: Path, unet_dir: Path) -> str:
    index = (folder / "model_index.json")
    if index.is_file():
        entry = _read_json(index).get("unet")
        if isinstance(entry, list) and len(entry) == 2 and entry[1]:
            return str(entry[1])
    return str(_read_json(unet_dir / "config.json").get("_class_name", "UNet2DConditionModel"))


def _load_folder(folder: Path, dtype_name: str | torch.dtype, device: torch.device,
                 dtype: torch.dtype, source: str) -> Components:
    unet_dir = _component_dir(folder, "unet")
    if unet_dir is None:
        raise WeightsError(f"{folder}: no unet/ folder with a config.json; not a pipeline")
    class_name = _unet_class_name(folder, unet_dir)
    if class_name not in _UNET_CLASSES:
        raise WeightsError(f"{folder}: unsupported UNet class {class_name!r}; "
                           f"supported: {sorted(_UNET_CLASSES)}")
    unet = load_model_folder(unet_dir, _UNET_CLASSES[class_name], dtype, device)
    scheduler_config = _scheduler_config(folder)
    if class_name == "UNet2DModel":
        return Components(None, None, unet, None, scheduler_config, source, "unet2d")
    vae_dir = _component_dir(folder, "vae")
    vae = None
    if vae_dir is not None:
        vae_config = _read_json(vae_dir / "config.json")
        vae = load_model_folder(vae_dir, AutoencoderKL, vae_dtype(dtype_name, dtype, vae_config),
                                device)
    text_dir = _component_dir(folder, "text_encoder")
    text_encoder = load_text_encoder(text_dir, dtype, device) if text_dir is not None else None
    tokenizer = None
    if (folder / "tokenizer").is_dir():
        tokenizer = load_tokenizer(folder / "tokenizer")
    elif text_encoder is not None:
        tokenizer = load_tokenizer()
    text_dir_2 = _component_dir(folder, "text_encoder_2")
    text_encoder_2 = (load_text_encoder(text_dir_2, dtype, device)
                      if text_dir_2 is not None else None)
    tokenizer_2 = None
    if (folder / "tokenizer_2").is_dir():
        tokenizer_2 = load_tokenizer(folder / "tokenizer_2")
    elif text_encoder_2 is not None:
        raise WeightsError(f"{folder}: has text_encoder_2/ but no tokenizer_2/")
    index = folder / "model_index.json"
    settings = _read_json(index) if index.is_file() else {}
    flags = {k: settings[k] for k in PIPELINE_FLAGS if k in settings}
    return Components(tokenizer, text_encoder, unet, vae, scheduler_config, source, "sd",
                      tokenizer_2, text_encoder_2, flags)


def load_components(
    source: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    models_dir: str | Path | None = None,
    prediction_type: str = "auto",
) -> Components:
    """Load every component of a pipeline from any kind of source, ready for inference.

    ``prediction_type`` (``auto``, ``epsilon`` or ``v_prediction``) sets what the model
    predicts where the weights cannot say: ``auto`` keeps a folder's scheduler config and,
    for a single file, reads a YAML beside it or takes the family's default
    (``nodes.diffusion.prediction_type``).
    """
    check_prediction_type(prediction_type)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    path = resolve_source(source, models_dir)
    if path.is_file():
        parts = load_single_file(path, torch_dtype, dev,
                                 vae_dtype=vae_dtype(dtype, torch_dtype, {}),
                                 prediction_type=prediction_type)
        return Components(parts.tokenizer, parts.text_encoder, parts.unet, parts.vae,
                          parts.scheduler_config, str(source), "sd", parts.tokenizer_2,
                          parts.text_encoder_2, parts.flags)
    components = _load_folder(path, dtype, dev, torch_dtype, str(source))
    if components.scheduler_config is not None:
        components.scheduler_config = resolve_prediction_type(prediction_type,
                                                               components.scheduler_config)
    return components


def _checkpoint_family(state: dict[str, torch.Tensor]) -> Family:
    """The family of a whole checkpoint (it sets the VAE's latent scale: SDXL's differs);
    SD 1.x's for a VAE stored alone under the checkpoint prefix."""
    try:
        return detect_family(state)
    except WeightsError:
        return "sd1"


def load_vae(
    source: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    models_dir: str | Path | None = None,
) -> AutoencoderKL:
    """A VAE on its own (to swap in a better one): a pipeline folder's ``vae/``, a VAE
    folder, or a single file (whole LDM checkpoint, or a VAE alone in the LDM or the
    diffusers key layout)."""
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    path = resolve_source(source, models_dir)
    if path.is_file():
        state = read_weights(path)
        if any(k.startswith("encoder.down_blocks.") for k in state):
            config = infer_vae_config_diffusers(state)
            return build_from_state(lambda: AutoencoderKL(config), state,
                                    vae_dtype(dtype, torch_dtype, {}), dev, f"VAE {path.name}")
        family: Family = "sd1"
        if any(k.startswith(VAE_PREFIX) for k in state):
            family = _checkpoint_family(state)
            state = {f"{VAE_PREFIX}{k}": v for k, v in split_prefix(state, VAE_PREFIX).items()}
        else:
            state = {f"{VAE_PREFIX}{k}": v for k, v in state.items()}
        vae = vae_from_ldm(state, vae_dtype(dtype, torch_dtype, {}), dev, family)
        if vae is None:
            raise WeightsError(f"{path}: contains no VAE weights")
        return vae
    vae_dir = path / "vae" if (path / "vae" / "config.json").is_file() else path
    if not (vae_dir / "config.json").is_file():
        raise WeightsError(f"{path}: no VAE config.json found (in vae/ or at the top)")
    config = _read_json(vae_dir / "config.json")
    return load_model_folder(vae_dir, AutoencoderKL, vae_dtype(dtype, torch_dtype, config), dev)


def load_scheduler_config(source: str | Path, models_dir: str | Path | None = None,
                          prediction_type: str = "auto") -> dict[str, Any]:
    """The scheduler config a pipeline was trained with: a folder's, or for a single file its
    family's (SD 1.x, 2.x or XL, read from the key names), with the prediction type chosen
    as ``load_components`` chooses it."""
    check_prediction_type(prediction_type)
    path = resolve_source(source, models_dir)
    if path.is_file():
        try:
            family = detect_family(read_weights(path))
        except WeightsError as exc:
            raise WeightsError(f"{path.name}: {exc}") from exc
        return single_file_scheduler_config(path, family, prediction_type)
    config = _scheduler_config(path)
    if config is None:
        raise WeightsError(f"{path}: no scheduler/scheduler_config.json")
    return resolve_prediction_type(prediction_type, config)
