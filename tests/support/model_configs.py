"""Tiny model configs, and Stable Diffusion 1.5's scheduler config, written once.

Sizes are toy sizes: a full denoising run takes milliseconds on one CPU thread, yet every
block type and option the loaders and parity tests care about is present.
"""

from __future__ import annotations

from typing import Any

# Stable Diffusion 1.5's scheduler config (PNDM): what SD pipelines ship, and where every
# scheduler swap starts from.
SD15_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}

# ------------------------------------------------------------------ parity test models
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

# ------------------------------------------------------------------ tiny SD (graph runs)
# 32 px images: the VAE halves them once, so latents are 16x16.
IMAGE_SIZE = 32
SD_UNET: dict[str, Any] = dict(
    block_out_channels=(16, 32), layers_per_block=1, sample_size=IMAGE_SIZE // 2,
    in_channels=4, out_channels=4, norm_num_groups=8, attention_head_dim=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
)
SD_VAE: dict[str, Any] = dict(
    block_out_channels=[16, 32], in_channels=3, out_channels=3, norm_num_groups=8,
    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    latent_channels=4, layers_per_block=1, sample_size=IMAGE_SIZE,
)
# OpenAI CLIP's vocabulary size and special tokens, so real prompts tokenize into it.
SD_TEXT: dict[str, Any] = dict(
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
    intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
    num_hidden_layers=2, vocab_size=49408, max_position_embeddings=77, projection_dim=32,
)

# ------------------------------------------------------------------ tiny SD1 (single file)
# SD1.x conventions (32 groups, 8 heads, 64-wide text heads) at toy width, so the model
# exports to an original-LDM single file that converters read with SD1.x's rules.
SD1_UNET: dict[str, Any] = dict(
    block_out_channels=(32, 32, 64), layers_per_block=2, sample_size=16,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64, attention_head_dim=8,
)
SD1_VAE: dict[str, Any] = VAE_CONFIGS["sd_like"]
# hidden 64 -> one 64-wide head, the convention single files are read with.
SD1_TEXT: dict[str, Any] = dict(
    vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
    bos_token_id=998, eos_token_id=999, pad_token_id=999,
)

# ------------------------------------------------------------------ tiny DDPM
DDPM_UNET: dict[str, Any] = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32),
    layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)


def tiny_text_config() -> Any:
    """SD1_TEXT as a transformers `CLIPTextConfig`."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**SD1_TEXT)

# ------------------------------------------------------------------ tiny SDXL (graph runs)
# SDXL's conventions at toy width: 64-channel attention heads, linear projections, a deeper
# transformer in the lower level, CLIP-L-like and OpenCLIP-G-like text encoders whose
# penultimate states are concatenated (64 + 64 = the UNet's context), a pooled projection
# (48, unequal to the width so a transposed projection cannot pass) and 8-wide embeddings of
# the six micro-conditioning numbers (five for the refiner: sizes, crop, aesthetic score).
SDXL_TIME_DIM = 8
SDXL_POOLED = 48
SDXL_UNET: dict[str, Any] = dict(
    block_out_channels=(64, 128), layers_per_block=2, sample_size=IMAGE_SIZE // 2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2),
    transformer_layers_per_block=(1, 2), use_linear_projection=True, cross_attention_dim=128,
    addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_DIM,
    projection_class_embeddings_input_dim=SDXL_POOLED + 6 * SDXL_TIME_DIM,
)
SDXL_REFINER_UNET: dict[str, Any] = dict(
    SDXL_UNET, cross_attention_dim=64, transformer_layers_per_block=2,
    projection_class_embeddings_input_dim=SDXL_POOLED + 5 * SDXL_TIME_DIM,
)
SDXL_VAE: dict[str, Any] = dict(SD_VAE, scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT_L: dict[str, Any] = dict(SD_TEXT, hidden_size=64, intermediate_size=96,
                                   num_attention_heads=1, hidden_act="quick_gelu")
SDXL_TEXT_G: dict[str, Any] = dict(SD_TEXT, hidden_size=64, intermediate_size=128,
                                   num_attention_heads=1, num_hidden_layers=3,
                                   projection_dim=SDXL_POOLED, hidden_act="gelu",
                                   pad_token_id=0)
# SDXL base 1.0's scheduler_config.json.
SDXL_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "interpolation_type": "linear", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False, "clip_sample": False,
}

# ------------------------------------------------------------------ tiny SD2 (single file)
# SD 2.x's conventions at toy width, so the model exports to a single file that converters
# read with 2.x's rules: an OpenCLIP-H-like text encoder (exact GELU, 64-wide heads, read at
# its last layer here = the checkpoint's penultimate), 64-channel attention heads (1 then 2,
# where 8 heads would compute something else), linear projections, upcast attention and
# v-prediction (stable-diffusion-2-1's scheduler).
SD2_UNET: dict[str, Any] = dict(
    block_out_channels=(64, 128), layers_per_block=1, sample_size=16,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
    attention_head_dim=(1, 2), use_linear_projection=True, upcast_attention=True,
)
SD2_VAE: dict[str, Any] = VAE_CONFIGS["sd_like"]
SD2_TEXT: dict[str, Any] = dict(SD_TEXT, hidden_size=64, intermediate_size=128,
                                num_attention_heads=1, num_hidden_layers=2, hidden_act="gelu",
                                pad_token_id=0)
# stable-diffusion-2-1's scheduler_config.json.
SD2_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "clip_sample": False,
    "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}
