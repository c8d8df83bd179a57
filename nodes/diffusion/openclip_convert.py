"""OpenCLIP text towers (SD2.x's ViT-H, SDXL's ViT-bigG) -> transformers' CLIP layout.

Single-file SD2 and SDXL checkpoints keep OpenCLIP's own module names: one fused
``attn.in_proj_weight`` per layer (query, key and value stacked in that order), ``ln_1``/
``ln_2``, ``mlp.c_fc``/``mlp.c_proj``, a bare ``positional_embedding`` tensor and
``text_projection`` stored as ``[width, projection]`` (OpenCLIP multiplies ``x @ P``, a
``Linear`` holds the transpose). OpenCLIP's text tower is architecturally CLIP's (pre-norm
layers, causal mask, exact GELU), so the tensors are renamed and split, never recomputed.

SD2 conditions on the *penultimate* layer followed by the final layer norm. A
``CLIPTextModel`` with the last layer removed computes exactly that as its
``last_hidden_state``, which is how diffusers' SD2 text encoder is configured (23 of the
checkpoint's 24 layers); ``drop_last_layer`` does the same here. SDXL reads hidden states of
a full-depth encoder instead, and also needs the projection for its pooled embedding.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from transformers import CLIPTextConfig

from .clip import BOS_ID, EOS_ID
from .storage import StateDict, WeightsError

_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
# OpenCLIP name inside a residual block -> transformers' name inside ``encoder.layers.N``.
_BLOCK_RENAMES = {
    "ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "attn.out_proj.": "self_attn.out_proj.",
    "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2.",
}
_TOP_RENAMES = {
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}
# Not part of the text encoder's computation: CLIP's contrastive temperature, and the
# causal mask some exports persist (transformers builds its own).
_IGNORED = ("logit_scale", "attn_mask")


def openclip_layer_count(state: Mapping[str, torch.Tensor]) -> int:
    """How many residual blocks the checkpoint's text tower has."""
    found = {int(m.group(1)) for k in state if (m := _LAYER.match(k))}
    if not found:
        raise WeightsError("the OpenCLIP text encoder has no transformer.resblocks")
    return max(found) + 1


def openclip_text_config(
    state: Mapping[str, torch.Tensor], *, drop_last_layer: bool
) -> CLIPTextConfig:
    """A CLIPTextConfig read off an OpenCLIP text tower's shapes (prefix already removed).

    Heads are 64 channels wide in every OpenCLIP text tower (ViT-H: 16 x 64, ViT-bigG:
    20 x 64); the activation is exact GELU (OpenAI's CLIP uses quick_gelu instead).
    """
    try:
        tokens = state["token_embedding.weight"]
        positions = state["positional_embedding"]
        fc1 = state["transformer.resblocks.0.mlp.c_fc.weight"]
    except KeyError as exc:
        raise WeightsError(f"the OpenCLIP text encoder lacks {exc.args[0]!r}") from exc
    layers = openclip_layer_count(state) - (1 if drop_last_layer else 0)
    if layers < 1:
        raise WeightsError("the OpenCLIP text encoder has too few layers")
    width = int(tokens.shape[1])
    projection = state.get("text_projection")
    return CLIPTextConfig(
        vocab_size=int(tokens.shape[0]), hidden_size=width, intermediate_size=int(fc1.shape[0]),
        num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
        max_position_embeddings=int(positions.shape[0]), hidden_act="gelu",
        projection_dim=int(projection.shape[1]) if projection is not None else width,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
    )


def _split_qkv(layer: str, kind: str, fused: torch.Tensor, out: StateDict) -> None:
    """OpenCLIP's fused input projection -> separate q/k/v projections (views, no copy)."""
    if fused.shape[0] % 3:
        raise WeightsError(f"resblock {layer}: in_proj_{kind} has {fused.shape[0]} rows, "
                           "not a multiple of 3")
    for name, part in zip(("q", "k", "v"), fused.chunk(3, dim=0), strict=True):
        out[f"encoder.layers.{layer}.self_attn.{name}_proj.{kind}"] = part


def convert_openclip_text(
    state: Mapping[str, torch.Tensor], config: CLIPTextConfig, *, with_projection: bool
) -> StateDict:
    """Rename an OpenCLIP text tower (prefix already removed) to transformers' CLIP keys
    (without the ``text_model.`` prefix), keeping the config's number of layers.

    Layers past ``config.num_hidden_layers`` are dropped (SD2's unused last layer); so is
    ``text_projection`` unless ``with_projection``.
    """
    keep = int(config.num_hidden_layers)
    out: StateDict = {}
    for key, value in state.items():
        if key in _IGNORED or key.endswith(".attn_mask"):
            continue
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
            continue
        if key == "text_projection":
            if with_projection:
                out["text_projection.weight"] = value.t().contiguous()
            continue
        match = _LAYER.match(key)
        if match is None:
            raise WeightsError(f"unexpected OpenCLIP text-encoder tensor {key!r}")
        layer, rest = match.group(1), match.group(2)
        if int(layer) >= keep:
            continue
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            _split_qkv(layer, rest.rsplit("_", 1)[1], value, out)
            continue
        for old, new in _BLOCK_RENAMES.items():
            if rest.startswith(old):
                out[f"encoder.layers.{layer}.{new}{rest[len(old):]}"] = value
                break
        else:
            raise WeightsError(f"unexpected OpenCLIP text-encoder tensor {key!r}")
    if with_projection and "text_projection.weight" not in out:
        raise WeightsError("the OpenCLIP text encoder has no text_projection")
    return out
