"""Architecture and on-disk layout of the shipped tiny models (`noodle-tiny`, `noodle-tiny-ddpm`).

The configs are Stable Diffusion's architecture at toy scale: the same block types, the same
CLIP text encoder class, the same VAE, the same PNDM scheduler config as SD 1.5, so the tiny
model travels every code path a real checkpoint does (diffusers folder layout, config keys,
state-dict keys). Sizes are chosen for CPU training in minutes and for the 25 MB budget:
the CLIP token embedding (49,408 rows, the real vocabulary) dominates, so the text width is 32.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from nodes.diffusion.unet import UNet2DConditionModel
from nodes.diffusion.unet2d import UNet2DModel
from nodes.diffusion.vae import AutoencoderKL

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIP_VOCAB_DIR = REPO_ROOT / "nodes" / "diffusion" / "tokenizers" / "clip"
DIFFUSERS_VERSION = "0.30.0"
TEXT_WIDTH = 32
MAX_TOKENS = 77

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 1.0,  # replaced by 1 / std of the training latents
}

# Cross-attention only at 8x8 and 4x4 (and the mid block): colour and shape are global
# properties, and attention over the 16x16 grid would double the training cost.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "cross_attention_dim": TEXT_WIDTH,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": TEXT_WIDTH,
    "intermediate_size": 4 * TEXT_WIDTH,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
    "hidden_act": "quick_gelu",
    "projection_dim": TEXT_WIDTH,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}

# The same betas and timestep conventions as Stable Diffusion 1.5.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "trained_betas": None,
}

# Pixel space at 32x32: a quarter of the cost of 64x64 and still recognisable shapes.
DDPM_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "norm_num_groups": 32,
}

DDPM_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "clip_sample": True,
    "variance_type": "fixed_small",
    "prediction_type": "epsilon",
    "trained_betas": None,
}

SD_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": DIFFUSERS_VERSION,
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

DDPM_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "DDPMPipeline",
    "_diffusers_version": DIFFUSERS_VERSION,
    "scheduler": ["diffusers", "DDPMScheduler"],
    "unet": ["diffusers", "UNet2DModel"],
}


def alphas_cumprod(config: dict[str, Any]) -> torch.Tensor:
    """The training noise schedule (cumulative product of 1 - beta) of a scheduler config."""
    n = int(config["num_train_timesteps"])
    start, end = float(config["beta_start"]), float(config["beta_end"])
    if config["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    elif config["beta_schedule"] == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {config['beta_schedule']!r}")
    return torch.cumprod(1.0 - betas, dim=0).float()


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(dict(VAE_CONFIG))


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(dict(UNET_CONFIG))


def build_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def build_ddpm_unet() -> UNet2DModel:
    return UNet2DModel(dict(DDPM_UNET_CONFIG))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _plain(value: Any) -> Any:
    """JSON-friendly copy of a config value (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def save_diffusers_model(module: torch.nn.Module, folder: Path, class_name: str,
                         weights_name: str = "diffusion_pytorch_model.safetensors",
                         config_overrides: dict[str, Any] | None = None) -> None:
    """Write `config.json` + safetensors weights the way diffusers' save_pretrained does."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {k: _plain(v) for k, v in dict(module.config).items() if not k.startswith("_")}
    config.update(config_overrides or {})
    config["_class_name"] = class_name
    config["_diffusers_version"] = DIFFUSERS_VERSION
    _write_json(folder / "config.json", config)
    state = {k: v.detach().to(torch.float32).contiguous().cpu()
             for k, v in module.state_dict().items()}
    save_file(state, str(folder / weights_name), metadata={"format": "pt"})


def save_tokenizer(folder: Path) -> None:
    """The real CLIP vocabulary, as shipped for single-file checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "LICENSE"):
        shutil.copyfile(CLIP_VOCAB_DIR / name, folder / name)
    _write_json(folder / "special_tokens_map.json", {
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})


def save_sd_pipeline(out: Path, text_encoder: CLIPTextModel, unet: torch.nn.Module,
                     vae: torch.nn.Module, scaling_factor: float) -> None:
    """models/noodle-tiny in the diffusers StableDiffusionPipeline folder layout."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "model_index.json", SD_MODEL_INDEX)
    save_tokenizer(out / "tokenizer")
    text_encoder.save_pretrained(str(out / "text_encoder"), safe_serialization=True)
    save_diffusers_model(unet, out / "unet", "UNet2DConditionModel")
    save_diffusers_model(vae, out / "vae", "AutoencoderKL",
                         config_overrides={"scaling_factor": round(scaling_factor, 5)})
    _write_json(out / "scheduler" / "scheduler_config.json", SD_SCHEDULER_CONFIG)


def save_ddpm_pipeline(out: Path, unet: torch.nn.Module) -> None:
    """models/noodle-tiny-ddpm in the layout of google/ddpm-cat-256."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "model_index.json", DDPM_MODEL_INDEX)
    save_diffusers_model(unet, out / "unet", "UNet2DModel")
    _write_json(out / "scheduler" / "scheduler_config.json", DDPM_SCHEDULER_CONFIG)
