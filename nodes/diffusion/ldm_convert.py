"""Original (LDM / CompVis and SGM) UNet and VAE layout -> our diffusers-named modules.

Single-file Stable Diffusion checkpoints (1.x, 2.x and XL alike) store the UNet under
``model.diffusion_model.`` and the VAE under ``first_stage_model.``, with the original
repositories' module names; SDXL's UNet adds ``label_emb`` (its pooled-text and
micro-conditioning embedding). They carry no config, so the architecture is read off tensor
shapes and the keys are renamed block by block. Text encoders are converted elsewhere
(``openclip_convert``; OpenAI CLIP is already stored in transformers' layout).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from .storage import StateDict, WeightsError

_RESNET_RENAMES = (
    ("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."), ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."),
    ("nin_shortcut.", "conv_shortcut."),
)


def _indices(state: Mapping[str, Any], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})


def _rename_resnet(rest: str) -> str:
    for old, new in _RESNET_RENAMES:
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _has(state: Mapping[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in state)


def _attention_depth(u: Mapping[str, torch.Tensor], block: str) -> int:
    """Transformer blocks in one spatial transformer (``block`` = its key prefix), 0 if none."""
    return len(_indices(u, f"{block}transformer_blocks."))


def _transformer_depths(u: Mapping[str, torch.Tensor], levels: int, lpb: int
                        ) -> int | tuple[int, ...]:
    """diffusers' ``transformer_layers_per_block``: one depth per level (SDXL base: 1, 2, 10).

    A level without attention gets 1 (as diffusers' SDXL configs say), except the last one:
    diffusers' middle block takes its depth from there. Equal depths collapse to one int.
    """
    mid = _attention_depth(u, "middle_block.1.")
    found = [_attention_depth(u, f"input_blocks.{1 + b * (lpb + 1)}.1.")
             or _attention_depth(u, f"output_blocks.{(levels - 1 - b) * (lpb + 1)}.1.")
             for b in range(levels)]
    distinct = {d for d in found if d} | ({mid} if mid else set())
    if len(distinct) <= 1:
        return distinct.pop() if distinct else 1
    depths = [d or 1 for d in found]
    if mid and not found[-1]:
        depths[-1] = mid
    return tuple(depths)


def infer_unet_config(u: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The part of a UNet2DConditionModel config that tensor shapes determine.

    What shapes cannot tell (head counts, attention upcasting, the default sample size, the
    width of SDXL's micro-conditioning embeddings) follows the model family's conventions
    and is filled in by the caller. ``label_emb`` (SDXL's pooled-text + micro-conditioning
    embedding) sets ``projection_class_embeddings_input_dim``.
    """
    n_in = len(_indices(u, "input_blocks."))
    downs = [i for i in _indices(u, "input_blocks.") if f"input_blocks.{i}.0.op.weight" in u]
    levels = len(downs) + 1
    lpb = (n_in - 1 - len(downs)) // levels
    if lpb < 1 or 1 + levels * lpb + len(downs) != n_in:
        raise WeightsError("the UNet's input blocks do not follow the Stable Diffusion layout")
    channels, down_types, up_types = [], [], []
    for b in range(levels):
        first = 1 + b * (lpb + 1)
        channels.append(int(u[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
        attn = _has(u, f"input_blocks.{first}.1.proj_in.")
        down_types.append("CrossAttnDownBlock2D" if attn else "DownBlock2D")
        up_attn = _has(u, f"output_blocks.{b * (lpb + 1)}.1.proj_in.")
        up_types.append("CrossAttnUpBlock2D" if up_attn else "UpBlock2D")
    k_key = next((k for k in u if k.endswith("attn2.to_k.weight")), None)
    if k_key is None:
        raise WeightsError("the UNet has no cross-attention layers; not a Stable Diffusion UNet")
    proj = next(k for k in u if k.endswith("proj_in.weight"))
    config: dict[str, Any] = {
        "in_channels": int(u["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(u["out.2.weight"].shape[0]),
        "down_block_types": tuple(down_types),
        "up_block_types": tuple(up_types),
        "mid_block_type": "UNetMidBlock2DCrossAttn" if _has(u, "middle_block.1.") else None,
        "block_out_channels": tuple(channels),
        "layers_per_block": lpb,
        "cross_attention_dim": int(u[k_key].shape[1]),
        "use_linear_projection": u[proj].ndim == 2,
        "transformer_layers_per_block": _transformer_depths(u, levels, lpb),
    }
    if "label_emb.0.0.weight" in u:
        config["addition_embed_type"] = "text_time"
        config["projection_class_embeddings_input_dim"] = int(u["label_emb.0.0.weight"].shape[1])
    elif _has(u, "label_emb."):
        raise WeightsError("class-conditioned UNets (unCLIP, upscalers) are not supported")
    return config


def convert_unet(u: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """Rename an LDM UNet state dict (prefix already stripped) to diffusers' keys."""
    lpb = int(config["layers_per_block"])
    fixed = {
        "time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
        "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out.",
        "label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2.",
    }
    out: StateDict = {}
    for key, value in u.items():
        new = None
        for old, repl in fixed.items():
            if key.startswith(old):
                new = repl + key[len(old):]
        parts = key.split(".")
        if new is None and parts[0] == "input_blocks":
            idx, sub, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            b, j = divmod(idx - 1, lpb + 1)
            if j == lpb:
                new = f"down_blocks.{b}.downsamplers.0.conv.{rest.removeprefix('op.')}"
            elif sub == "0":
                new = f"down_blocks.{b}.resnets.{j}.{_rename_resnet(rest)}"
            else:
                new = f"down_blocks.{b}.attentions.{j}.{rest}"
        elif new is None and parts[0] == "middle_block":
            sub, rest = parts[1], ".".join(parts[2:])
            new = {"0": f"mid_block.resnets.0.{_rename_resnet(rest)}",
                   "1": f"mid_block.attentions.0.{rest}",
                   "2": f"mid_block.resnets.1.{_rename_resnet(rest)}"}[sub]
        elif new is None and parts[0] == "output_blocks":
            idx, sub, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            b, j = divmod(idx, lpb + 1)
            if sub == "0":
                new = f"up_blocks.{b}.resnets.{j}.{_rename_resnet(rest)}"
            elif rest.startswith("conv."):
                new = f"up_blocks.{b}.upsamplers.0.{rest}"
            else:
                new = f"up_blocks.{b}.attentions.{j}.{rest}"
        if new is None:
            raise WeightsError(f"unexpected UNet tensor {key!r} in the checkpoint")
        out[new] = value
    return out


def infer_vae_config(v: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """An AutoencoderKL config matching an LDM ``first_stage_model`` state dict."""
    levels = _indices(v, "encoder.down.")
    if not levels:
        raise WeightsError("the checkpoint's VAE has no encoder blocks")
    channels = tuple(int(v[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels)
    return _vae_config(v, channels, len(_indices(v, "encoder.down.0.block.")),
                       _has(v, "encoder.mid.attn_1."))


def infer_vae_config_diffusers(v: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """An AutoencoderKL config for a VAE file already in diffusers' key layout."""
    levels = _indices(v, "encoder.down_blocks.")
    channels = tuple(
        int(v[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels
    )
    return _vae_config(v, channels, len(_indices(v, "encoder.down_blocks.0.resnets.")),
                       _has(v, "encoder.mid_block.attentions."))


def _vae_config(v: Mapping[str, torch.Tensor], channels: tuple[int, ...], layers: int,
                mid_attention: bool) -> dict[str, Any]:
    """The AutoencoderKL config both key layouts share, given what differs between them."""
    return {
        "in_channels": int(v["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(v["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ("DownEncoderBlock2D",) * len(channels),
        "up_block_types": ("UpDecoderBlock2D",) * len(channels),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": int(v["decoder.conv_in.weight"].shape[1]),
        "sample_size": 512,
        "use_quant_conv": "quant_conv.weight" in v,
        "use_post_quant_conv": "post_quant_conv.weight" in v,
        "mid_block_add_attention": mid_attention,
    }


_VAE_ATTN = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.",
             "proj_out.": "to_out.0."}


def convert_vae(v: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """Rename an LDM VAE state dict (prefix stripped); 1x1-conv attention weights become
    the linear weights diffusers uses."""
    n = len(config["block_out_channels"])
    out: StateDict = {}
    for key, value in v.items():
        parts = key.split(".")
        side = parts[0]
        rest = ".".join(parts[1:])
        if side not in ("encoder", "decoder"):
            out[key] = value
            continue
        if rest.startswith("norm_out."):
            new = f"{side}.conv_norm_out.{rest[len('norm_out.'):]}"
        elif rest.startswith(("conv_in.", "conv_out.")):
            new = key
        elif parts[1] == "mid":
            which, tail = parts[2], ".".join(parts[3:])
            if which.startswith("block_"):
                new = f"{side}.mid_block.resnets.{int(which[6:]) - 1}.{_rename_resnet(tail)}"
            else:
                for old, repl in _VAE_ATTN.items():
                    if tail.startswith(old):
                        tail = repl + tail[len(old):]
                        break
                new = f"{side}.mid_block.attentions.0.{tail}"
                if value.ndim == 4 and "group_norm" not in new:
                    value = value[:, :, 0, 0]
        elif parts[1] in ("down", "up"):
            level = int(parts[2])
            i = level if side == "encoder" else n - 1 - level
            blocks = "down_blocks" if side == "encoder" else "up_blocks"
            if parts[3] == "block":
                tail = _rename_resnet(".".join(parts[5:]))
                new = f"{side}.{blocks}.{i}.resnets.{parts[4]}.{tail}"
            elif parts[3] in ("downsample", "upsample"):
                sampler = "downsamplers" if side == "encoder" else "upsamplers"
                new = f"{side}.{blocks}.{i}.{sampler}.0.{'.'.join(parts[4:])}"
            else:
                raise WeightsError(f"unexpected VAE tensor {key!r} in the checkpoint")
        else:
            raise WeightsError(f"unexpected VAE tensor {key!r} in the checkpoint")
        out[new] = value
    return out
