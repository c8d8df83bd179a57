"""The SD1.5-size random-weight model the whole-pipeline benchmarks share, in both layouts.

The single file is the test suite's (`tests.support.sd15_random`, cached where the ComfyUI
parity tests keep it, so it is built once for both); the diffusers folder is made *from that
file* by diffusers' own single-file loader, configured offline from a folder of configs
only. Every implementation therefore runs exactly the same weights: ours and ComfyUI read the
file, diffusers reads the folder.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.model_configs import SD15_SCHEDULER  # noqa: E402
from tests.support.sd15_random import (  # noqa: E402
    SD15_TEXT,
    SD15_UNET,
    SD15_VAE,
    build_sd15_checkpoint,
    checkpoint_name,
)

# Shared with the test suite and benchmarks/comfyui_parity.py.
DEFAULT_MODELS = REPO / ".pytest_cache" / "d" / "comfyui-sd15-models"


def sd15_checkpoint(models: Path = DEFAULT_MODELS) -> Path:
    """The single-file checkpoint under `models`/checkpoints (built on first use, ~2 GB)."""
    return build_sd15_checkpoint(models / "checkpoints" / checkpoint_name())


def _write_configs(folder: Path) -> None:
    """A pipeline folder with every config and the tokenizer, and no weights: what
    `from_single_file(config=...)` reads instead of downloading."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig

    from nodes.diffusion.clip import SHIPPED_TOKENIZER

    with torch.device("meta"):
        diffusers.UNet2DConditionModel(**SD15_UNET).save_config(str(folder / "unet"))
        diffusers.AutoencoderKL(**SD15_VAE).save_config(str(folder / "vae"))
    CLIPTextConfig(**SD15_TEXT, architectures=["CLIPTextModel"]).save_pretrained(
        str(folder / "text_encoder"))
    shutil.copytree(SHIPPED_TOKENIZER, folder / "tokenizer", dirs_exist_ok=True)
    params = inspect.signature(diffusers.PNDMScheduler).parameters
    takes = {k: v for k, v in SD15_SCHEDULER.items() if k in params}
    diffusers.PNDMScheduler(**takes).save_config(str(folder / "scheduler"))
    index: dict[str, Any] = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False, "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def sd15_folder(checkpoint: Path, folder: Path) -> Path:
    """The diffusers folder holding `checkpoint`'s weights (fp16, as in the file), made
    unless `folder` has it already."""
    if (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        return folder
    import diffusers
    import torch

    configs = folder.with_name(folder.name + ".configs")
    configs.mkdir(parents=True, exist_ok=True)
    _write_configs(configs)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pipe = diffusers.StableDiffusionPipeline.from_single_file(
        str(checkpoint), config=str(configs), local_files_only=True, torch_dtype=torch.float16,
        safety_checker=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    shutil.rmtree(configs, ignore_errors=True)
    return folder


def read_pixels(path: Path) -> Any:
    """A saved PNG as a float array in 0..1 (for the images-agree line of a report)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
