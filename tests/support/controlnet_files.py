"""Tiny random ControlNets built by diffusers (the oracle), and an exporter to the original
single-file layout (`control_model.*`), written from the layout's description: the encoder
keys as the LDM UNet's (tests/support/ldm_export.py), `input_hint_block` convs at even
indices, `zero_convs.i.0` and `middle_block_out.0`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.ldm_export import unet_to_ldm

PREFIX = "control_model."
_OWN = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")


def random_controlnet(unet: Any, seed: int, std: float = 0.3, **overrides: Any) -> Any:
    """diffusers' `ControlNetModel.from_unet(unet)` with its zero-initialised convs (and
    the conditioning embedding) drawn at random, so it changes the UNet's output."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    model = diffusers.ControlNetModel.from_unet(unet, **overrides)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(_OWN):
                param.normal_(0.0, std)
    return model.eval()


def save_controlnet(model: Any, folder: Path) -> Path:
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def controlnet_to_original(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers ControlNetModel keys -> original `control_model.*` keys."""
    n = len(config["block_out_channels"])
    unet_config = {**config, "up_block_types": ("UpBlock2D",) * n}
    encoder = {k: v for k, v in state.items() if not k.startswith(_OWN)}
    out = {PREFIX + k[len("model.diffusion_model."):]: v
           for k, v in unet_to_ldm(encoder, unet_config).items()}
    n_blocks = len(config["conditioning_embedding_out_channels"]) * 2 - 2
    for key, value in state.items():
        if key.startswith("controlnet_cond_embedding."):
            part, rest = key[len("controlnet_cond_embedding."):].split(".", 1)
            if part == "conv_in":
                idx = 0
            elif part == "conv_out":
                idx = 2 * (n_blocks + 1)
            else:  # blocks.k.weight
                k, rest = rest.split(".", 1)
                idx = 2 * (int(k) + 1)
            out[f"{PREFIX}input_hint_block.{idx}.{rest}"] = value
        elif key.startswith("controlnet_down_blocks."):
            _, i, rest = key.split(".", 2)
            out[f"{PREFIX}zero_convs.{i}.0.{rest}"] = value
        elif key.startswith("controlnet_mid_block."):
            out[f"{PREFIX}middle_block_out.0.{key.split('.', 1)[1]}"] = value
    return out


def export_original(model: Any, path: Path) -> Path:
    """Write a diffusers ControlNetModel as an original-layout `.safetensors` file."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(controlnet_to_original(state, dict(model.config)), str(path))
    return path
