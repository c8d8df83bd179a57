"""A random-weight checkpoint with Stable Diffusion 1.5's exact layout and sizes.

ComfyUI recognises a checkpoint by its key names and shapes, so whole-workflow parity with it
needs a file shaped like a real SD1.5 ``.safetensors``: the original LDM key layout, the full
UNet (320/640/1280/1280 channels, 768-wide cross-attention), the full VAE and CLIP ViT-L/14's
text encoder, in fp16. No weights can be downloaded here, so they are random.

The key names and shapes come from diffusers' and transformers' model classes built on the
``meta`` device (no memory), mapped to LDM names by ``ldm_export``; each tensor is then filled
from its own seeded generator, one at a time, with PyTorch's default-like scale (so activations
stay in a sane range through the network). Peak memory is about the file's size (~2 GB).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
SD15_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def _shapes() -> dict[str, tuple[int, ...]]:
    """Every LDM key of an SD1.5 checkpoint and its shape."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.support.ldm_export import unet_to_ldm, vae_to_ldm

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**SD15_UNET)
        vae = diffusers.AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    state: dict[str, Any] = {}
    state.update(unet_to_ldm(unet.state_dict(), dict(unet.config)))
    state.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    for key, value in text.state_dict().items():
        state["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = value
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    shapes.pop("cond_stage_model.transformer.text_model.embeddings.position_ids", None)
    return shapes


def _fill(key: str, shape: tuple[int, ...]) -> Any:
    """A deterministic random tensor for one key: norms 1 and 0, embeddings std 0.02, other
    weights uniform with PyTorch's default bound 1/sqrt(fan_in), biases small."""
    import torch

    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**63 - 1)
    generator = torch.Generator().manual_seed(seed)
    leaf = key.rsplit(".", 1)[-1]
    is_norm = any(part in key for part in ("norm", "layer_norm", "ln_")) and len(shape) == 1
    if is_norm:
        return (torch.ones if leaf == "weight" else torch.zeros)(shape, dtype=torch.float16)
    values = torch.empty(shape, dtype=torch.float16)
    if "embedding" in key:
        return values.normal_(0.0, 0.02, generator=generator)
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    bound = 1.0 / max(fan_in, 1) ** 0.5 if len(shape) > 1 else 0.02
    return values.uniform_(-bound, bound, generator=generator)


def checkpoint_name() -> str:
    """The file name, versioned by this module's source: a cached file made by an older
    builder is never mistaken for the current one."""
    version = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
    return f"sd15_random_{version}.safetensors"


def build_sd15_checkpoint(path: Path) -> Path:
    """Write the random SD1.5-size checkpoint to ``path`` (fp16 safetensors) unless it is
    there already. Safe when two processes build it at once (each writes its own file and
    renames it into place)."""
    import os

    import torch
    from safetensors.torch import save_file

    if path.is_file():
        return path
    tensors = {key: _fill(key, shape) for key, shape in sorted(_shapes().items())}
    tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(
        77, dtype=torch.int64
    )[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    save_file(tensors, str(partial))
    partial.replace(path)
    return path
