"""diffusers -> original LDM (single-file) export, for the single-file loading tests.

The export follows the key tables of diffusers' conversion script
(scripts/convert_diffusers_to_original_stable_diffusion.py), written out independently of
the product's LDM importer; diffusers' own importer checks it in the tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

Prefixes = list[tuple[str, str]]

_RESNET = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
           ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."),
           ("conv_shortcut.", "skip_connection.")]
_VAE_ATTENTION = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                  ("to_out.0.", "proj_out.")]


def _match(key: str, prefixes: Prefixes) -> tuple[str, str, str] | None:
    """The first (diffusers prefix, LDM prefix) pair `key` starts with, and the rest."""
    for hf, sd in prefixes:
        if key.startswith(hf):
            return hf, sd, key[len(hf):]
    return None


def _swap_start(rest: str, pairs: Iterable[tuple[str, str]]) -> str:
    for a, b in pairs:
        if rest.startswith(a):
            return b + rest[len(a):]
    return rest


def _unet_prefixes(config: dict[str, Any]) -> Prefixes:
    lpb = config["layers_per_block"]
    n = len(config["block_out_channels"])
    prefixes: Prefixes = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        # SDXL's pooled-text + micro-conditioning embedding (SGM's ADM "label" embedding).
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i in range(n):
        for j in range(lpb):
            sd_in = f"input_blocks.{(lpb + 1) * i + j + 1}"
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"{sd_in}.0."))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"{sd_in}.1."))
        for j in range(lpb + 1):
            sd_out = f"output_blocks.{(lpb + 1) * i + j}"
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"{sd_out}.0."))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"{sd_out}.1."))
        if i < n - 1:
            sd_down = f"input_blocks.{(lpb + 1) * (i + 1)}.0.op."
            prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", sd_down))
            slot = 2 if "CrossAttn" in config["up_block_types"][i] else 1
            sd_up = f"output_blocks.{(lpb + 1) * i + lpb}.{slot}."
            prefixes.append((f"up_blocks.{i}.upsamplers.0.", sd_up))
    return prefixes


def unet_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers UNet2DConditionModel keys -> ``model.diffusion_model.*`` LDM keys."""
    prefixes = _unet_prefixes(config)
    out = {}
    for key, value in state.items():
        found = _match(key, prefixes)
        assert found is not None, key
        hf, sd, rest = found
        if ".resnets." in hf or hf.startswith("mid_block.resnets"):
            rest = _swap_start(rest, _RESNET)
        out["model.diffusion_model." + sd + rest] = value
    return out


def _vae_prefixes(config: dict[str, Any]) -> Prefixes:
    n = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    prefixes: Prefixes = []
    for i in range(n):
        up = n - 1 - i
        for j in range(lpb):
            prefixes.append(
                (f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.")
            )
        for j in range(lpb + 1):
            prefixes.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{up}.block.{j}."))
        prefixes.append(
            (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
        )
        prefixes.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{up}.upsample."))
    for side in ("encoder", "decoder"):
        prefixes += [
            (f"{side}.mid_block.resnets.{i}.", f"{side}.mid.block_{i + 1}.") for i in range(2)
        ]
        prefixes += [(f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1."),
                     (f"{side}.conv_norm_out.", f"{side}.norm_out.")]
    return prefixes


def vae_to_ldm(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers AutoencoderKL keys -> ``first_stage_model.*`` LDM keys (1x1-conv attention)."""
    prefixes = _vae_prefixes(config)
    out = {}
    for key, value in state.items():
        new = key
        found = _match(key, prefixes)
        if found is not None:
            _, sd, rest = found
            rest = rest.replace("conv_shortcut.", "nin_shortcut.")
            if sd.endswith("attn_1."):
                rest = _swap_start(rest, _VAE_ATTENTION)
                if value.ndim == 2:
                    value = value[:, :, None, None]
            new = sd + rest
        out["first_stage_model." + new] = value
    return out


def export_single_file(pipe: Any, path: Path) -> Path:
    """Write `pipe`'s UNet, VAE and text encoder as an SD1.x single-file checkpoint."""
    import torch
    from safetensors.torch import save_file

    state = {}
    state.update(unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config)))
    state.update(vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    for key, value in pipe.text_encoder.state_dict().items():
        # SD1.x files store transformers' pre-5.0 names (with the text_model. prefix).
        plain = key.removeprefix("text_model.")
        state[f"cond_stage_model.transformer.text_model.{plain}"] = value
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = (
        torch.arange(77)[None].float()
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
