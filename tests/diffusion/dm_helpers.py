"""Tiny model configs and a diffusers -> original-LDM export used by the diffusion tests.

The export follows the key tables of diffusers' conversion script
(scripts/convert_diffusers_to_original_stable_diffusion.py), written out independently of
the product's LDM importer; diffusers' own importer checks it in the tests.
"""

from __future__ import annotations

from typing import Any

import torch

UNET_COND_CONFIGS: dict[str, dict[str, Any]] = {
    "sd1_like": dict(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    ),
    "sd2_like": dict(
        block_out_channels=(32, 64, 64), layers_per_block=1, sample_size=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48, attention_head_dim=(2, 4, 4), use_linear_projection=True,
        upcast_attention=True, norm_num_groups=16,
    ),
    "groups8_misc": dict(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=3,
        out_channels=5, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=24,
        attention_head_dim=(2, 4), norm_num_groups=8, flip_sin_to_cos=False, freq_shift=1,
        transformer_layers_per_block=2, resnet_time_scale_shift="scale_shift",
    ),
}

UNET2D_CONFIGS: dict[str, dict[str, Any]] = {
    "ddpm_like": dict(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
    ),
    "scale_shift_3lvl": dict(
        block_out_channels=(16, 32, 32), layers_per_block=2, sample_size=8, in_channels=1,
        out_channels=2, norm_num_groups=8, attention_head_dim=None,
        down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
        resnet_time_scale_shift="scale_shift", flip_sin_to_cos=False, freq_shift=1,
    ),
}

VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "sd_like": dict(
        block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    ),
    "groups8_no_quant": dict(
        block_out_channels=(16, 32, 32), layers_per_block=2, latent_channels=3, sample_size=16,
        in_channels=1, out_channels=2, norm_num_groups=8, use_quant_conv=False,
        use_post_quant_conv=False, mid_block_add_attention=False, scaling_factor=0.5,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    ),
}

# The single-file test model: SD1.x conventions (32 groups, 8 heads) at toy width.
SF_UNET = dict(
    block_out_channels=(32, 32, 64), layers_per_block=2, sample_size=16,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64, attention_head_dim=8,
)
SF_VAE = VAE_CONFIGS["sd_like"]


def tiny_text_config():  # noqa: ANN201 - transformers type
    from transformers import CLIPTextConfig

    # hidden 64 -> one 64-wide head, the convention single files are read with.
    return CLIPTextConfig(vocab_size=1000, hidden_size=64, intermediate_size=96,
                          num_hidden_layers=2, num_attention_heads=1,
                          max_position_embeddings=77, hidden_act="quick_gelu",
                          bos_token_id=998, eos_token_id=999, pad_token_id=999)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's largest magnitude."""
    scale = ref.float().abs().max().clamp_min(1e-12)
    return float((ours.float() - ref.float()).abs().max() / scale)


def _resnet_sd() -> list[tuple[str, str]]:
    return [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."),
            ("norm2.", "out_layers.0."),
            ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."),
            ("conv_shortcut.", "skip_connection.")]


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers UNet2DConditionModel keys -> ``model.diffusion_model.*`` LDM keys."""
    lpb = config["layers_per_block"]
    n = len(config["block_out_channels"])
    prefixes: list[tuple[str, str]] = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
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
    out = {}
    for key, value in state.items():
        new = None
        for hf, sd in prefixes:
            if key.startswith(hf):
                rest = key[len(hf):]
                if ".resnets." in hf or hf.startswith("mid_block.resnets"):
                    for a, b in _resnet_sd():
                        if rest.startswith(a):
                            rest = b + rest[len(a):]
                new = sd + rest
                break
        assert new is not None, key
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    """diffusers AutoencoderKL keys -> ``first_stage_model.*`` LDM keys (1x1-conv attention)."""
    n = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    prefixes = []
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
    attn = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
            ("to_out.0.", "proj_out.")]
    out = {}
    for key, value in state.items():
        new = key
        for hf, sd in prefixes:
            if key.startswith(hf):
                rest = key[len(hf):]
                rest = rest.replace("conv_shortcut.", "nin_shortcut.")
                if sd.endswith("attn_1."):
                    for a, b in attn:
                        if rest.startswith(a):
                            rest = b + rest[len(a):]
                    if value.ndim == 2:
                        value = value[:, :, None, None]
                new = sd + rest
                break
        out["first_stage_model." + new] = value
    return out
