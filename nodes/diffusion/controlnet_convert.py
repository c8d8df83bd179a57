"""The original ControlNet single-file layout -> our diffusers-named ControlNetModel.

Files such as ``control_v11p_sd15_canny.safetensors`` hold the ControlNet as the original
repository built it: an LDM UNet encoder (``input_blocks``, ``middle_block``,
``time_embed``, SDXL's ``label_emb``) plus ``input_hint_block`` (the conditioning
embedding: convs with SiLUs between, so the convs sit at even indices), ``zero_convs``
(one 1x1 conv per skip connection) and ``middle_block_out``, usually under
``control_model.``. The encoder's keys rename as the UNet's do (``ldm_convert``); the
architecture is read off tensor shapes and the model family's conventions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .controlnet import ControlNetModel
from .ldm_convert import _has, _indices, _transformer_depths, convert_unet
from .model_family import Family, apply_unet_conventions
from .storage import StateDict, WeightsError, build_from_state, read_weights

CONTROL_PREFIX = "control_model."
HINT = "input_hint_block."
_OWN = (HINT, "zero_convs.", "middle_block_out.")


def is_original_layout(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is an original-layout ControlNet (prefixed or not)."""
    return any(k.startswith((CONTROL_PREFIX + HINT, HINT)) for k in state)


def strip_prefix(state: Mapping[str, torch.Tensor]) -> StateDict:
    """The ControlNet's tensors without ``control_model.`` (files exist with and without)."""
    if any(k.startswith(CONTROL_PREFIX) for k in state):
        return {k[len(CONTROL_PREFIX):]: v for k, v in state.items()
                if k.startswith(CONTROL_PREFIX)}
    return dict(state)


def controlnet_family(c: Mapping[str, torch.Tensor]) -> Family:
    """SDXL when there is a ``label_emb``, SD 2.x for 1024-wide text, else SD 1.x."""
    if _has(c, "label_emb."):
        return "sdxl"
    k_key = next((k for k in c if k.endswith("attn2.to_k.weight")), None)
    if k_key is None:
        raise WeightsError("the ControlNet has no cross-attention layers")
    return "sd2" if int(c[k_key].shape[1]) == 1024 else "sd1"


def _hint_convs(c: Mapping[str, torch.Tensor]) -> list[int]:
    convs = [i for i in _indices(c, HINT) if f"{HINT}{i}.weight" in c]
    if len(convs) < 2:
        raise WeightsError("the ControlNet's input_hint_block has too few convolutions")
    return convs


def infer_controlnet_config(c: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ControlNetModel config that tensor shapes (and the family) determine."""
    n_in = len(_indices(c, "input_blocks."))
    downs = [i for i in _indices(c, "input_blocks.") if f"input_blocks.{i}.0.op.weight" in c]
    levels = len(downs) + 1
    lpb = (n_in - 1 - len(downs)) // levels
    if lpb < 1 or 1 + levels * lpb + len(downs) != n_in:
        raise WeightsError("the ControlNet's input blocks do not follow the Stable Diffusion "
                           "layout")
    channels, types = [], []
    for b in range(levels):
        first = 1 + b * (lpb + 1)
        channels.append(int(c[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
        types.append("CrossAttnDownBlock2D" if _has(c, f"input_blocks.{first}.1.proj_in.")
                     else "DownBlock2D")
    convs = _hint_convs(c)
    # conv_in, then per step a plain conv and a strided one: the strided ones set the widths.
    hint = [int(c[f"{HINT}{convs[0]}.weight"].shape[0])]
    hint += [int(c[f"{HINT}{i}.weight"].shape[0]) for i in convs[2:-1:2]]
    k_key = next(k for k in c if k.endswith("attn2.to_k.weight"))
    proj = next(k for k in c if k.endswith("proj_in.weight"))
    config: dict[str, Any] = {
        "in_channels": int(c["input_blocks.0.0.weight"].shape[1]),
        "conditioning_channels": int(c[f"{HINT}{convs[0]}.weight"].shape[1]),
        "conditioning_embedding_out_channels": tuple(hint),
        "down_block_types": tuple(types),
        "mid_block_type": ("UNetMidBlock2DCrossAttn" if _has(c, "middle_block.1.")
                           else "UNetMidBlock2D"),
        "block_out_channels": tuple(channels),
        "layers_per_block": lpb,
        "cross_attention_dim": int(c[k_key].shape[1]),
        "use_linear_projection": c[proj].ndim == 2,
        "transformer_layers_per_block": _transformer_depths(c, levels, lpb),
    }
    if "label_emb.0.0.weight" in c:
        config["addition_embed_type"] = "text_time"
        config["projection_class_embeddings_input_dim"] = int(c["label_emb.0.0.weight"].shape[1])
    config = apply_unet_conventions(config, controlnet_family(c), None)
    config.pop("sample_size", None)
    return config


def convert_controlnet(c: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """Rename an original-layout ControlNet (prefix stripped) to diffusers' keys."""
    encoder = {k: v for k, v in c.items() if not k.startswith(_OWN)}
    out = convert_unet(encoder, config)
    convs = _hint_convs(c)
    hint_names = {convs[0]: "conv_in", convs[-1]: "conv_out"}
    hint_names.update({i: f"blocks.{n}" for n, i in enumerate(convs[1:-1])})
    for key, value in c.items():
        if key.startswith(HINT):
            idx, rest = key[len(HINT):].split(".", 1)
            out[f"controlnet_cond_embedding.{hint_names[int(idx)]}.{rest}"] = value
        elif key.startswith("zero_convs."):
            idx, _, rest = key[len("zero_convs."):].split(".", 2)
            out[f"controlnet_down_blocks.{idx}.{rest}"] = value
        elif key.startswith("middle_block_out."):
            out[f"controlnet_mid_block.{key.split('.', 2)[2]}"] = value
    return out


def controlnet_from_original(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None,
                             device: torch.device | str, what: str = "ControlNet"
                             ) -> ControlNetModel:
    """Build a ControlNetModel from an original-layout state dict."""
    c = strip_prefix(state)
    config = infer_controlnet_config(c)
    weights = convert_controlnet(c, config)
    return build_from_state(lambda: ControlNetModel(config), weights, dtype, device, what)


def infer_diffusers_controlnet_config(d: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The config of a ControlNet stored with diffusers' keys but without its config.json
    (a lone ``diffusion_pytorch_model.safetensors``): shapes, then the family's
    conventions, as for the original layout."""
    levels = _indices(d, "down_blocks.")
    lpb = len(_indices(d, "down_blocks.0.resnets."))
    channels = tuple(int(d[f"down_blocks.{b}.resnets.0.conv1.weight"].shape[0]) for b in levels)
    types = tuple("CrossAttnDownBlock2D" if _has(d, f"down_blocks.{b}.attentions.")
                  else "DownBlock2D" for b in levels)
    embed = "controlnet_cond_embedding."
    blocks = _indices(d, embed + "blocks.")
    hint = [int(d[embed + "conv_in.weight"].shape[0])]
    hint += [int(d[f"{embed}blocks.{i}.weight"].shape[0]) for i in blocks[1::2]]
    depths = [len(_indices(d, f"down_blocks.{b}.attentions.0.transformer_blocks.")) or 1
              for b in levels]
    k_key = next((k for k in d if k.endswith("attn2.to_k.weight")), None)
    proj = next((k for k in d if k.endswith("proj_in.weight")), None)
    if k_key is None or proj is None:
        raise WeightsError("the ControlNet has no cross-attention layers")
    config: dict[str, Any] = {
        "in_channels": int(d["conv_in.weight"].shape[1]),
        "conditioning_channels": int(d[embed + "conv_in.weight"].shape[1]),
        "conditioning_embedding_out_channels": tuple(hint),
        "down_block_types": types,
        "mid_block_type": ("UNetMidBlock2DCrossAttn" if _has(d, "mid_block.attentions.")
                           else "UNetMidBlock2D"),
        "block_out_channels": channels,
        "layers_per_block": lpb,
        "cross_attention_dim": int(d[k_key].shape[1]),
        "use_linear_projection": d[proj].ndim == 2,
        "transformer_layers_per_block": depths[0] if len(set(depths)) == 1 else tuple(depths),
    }
    if "add_embedding.linear_1.weight" in d:
        config["addition_embed_type"] = "text_time"
        config["projection_class_embeddings_input_dim"] = int(
            d["add_embedding.linear_1.weight"].shape[1])
    family: Family = ("sdxl" if "addition_embed_type" in config
                      else "sd2" if config["cross_attention_dim"] == 1024 else "sd1")
    config = apply_unet_conventions(config, family, None)
    config.pop("sample_size", None)
    return config


def load_controlnet_file(path: str | Path, dtype: torch.dtype | None = None,
                         device: torch.device | str = "cpu") -> ControlNetModel:
    """A single-file ControlNet (``.safetensors`` or ``.ckpt``): the original layout, or
    diffusers' keys without a config.json."""
    state = read_weights(path)
    if is_original_layout(state):
        return controlnet_from_original(state, dtype, device, Path(path).name)
    if "controlnet_cond_embedding.conv_in.weight" in state:
        config = infer_diffusers_controlnet_config(state)
        return build_from_state(lambda: ControlNetModel(config), state, dtype, device,
                                Path(path).name)
    raise WeightsError(f"{path}: not a ControlNet (no input_hint_block or "
                       "controlnet_cond_embedding)")
