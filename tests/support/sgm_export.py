"""diffusers -> original single-file layouts of SD 2.x (LDM + OpenCLIP-H) and SDXL (SGM),
for the single-file loading tests.

Written from the original repositories' module names (OpenCLIP's text transformer, SGM's
``conditioner.embedders``), independently of the product's importers; diffusers' own
single-file loader reads every file written here in the tests.

What real files contain is reproduced, including what a loader must skip: CLIP's
``logit_scale``, and for SD 2.x the text tower's last residual block and its
``text_projection``, which SD 2.x never uses (it reads the penultimate layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.ldm_export import unet_to_ldm, vae_to_ldm

# transformers' name inside ``encoder.layers.N`` -> OpenCLIP's inside ``resblocks.N``.
_BLOCK = [("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
          ("self_attn.out_proj.", "attn.out_proj."), ("mlp.fc1.", "mlp.c_fc."),
          ("mlp.fc2.", "mlp.c_proj.")]
_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}


def _plain(state: dict[str, Any]) -> dict[str, Any]:
    """transformers' CLIP keys without ``text_model.`` (present before 5.x and in the
    projection model), without the ``position_ids`` constant."""
    return {k.removeprefix("text_model."): v for k, v in state.items()
            if not k.endswith("position_ids")}


def _layer_count(plain: dict[str, Any]) -> int:
    return 1 + max(int(k.split(".")[2]) for k in plain if k.startswith("encoder.layers."))


def _fused_qkv(plain: dict[str, Any], layer: int) -> dict[str, Any]:
    """OpenCLIP's ``nn.MultiheadAttention`` keeps q, k and v stacked in one projection."""
    import torch

    prefix = f"encoder.layers.{layer}.self_attn."
    return {f"transformer.resblocks.{layer}.attn.in_proj_{kind}": torch.cat(
        [plain[f"{prefix}{p}_proj.{kind}"] for p in ("q", "k", "v")]) for kind in
        ("weight", "bias")}


def clip_to_openclip(state: dict[str, Any], extra_layer: bool = False,
                     projection_dim: int | None = None) -> dict[str, Any]:
    """A transformers CLIP text model's state dict in OpenCLIP's text-tower layout.

    ``text_projection`` is stored as OpenCLIP multiplies it, ``[width, projection]``; a
    model without one gets a random ``projection_dim``-wide one, as SD 2.x files carry.
    ``extra_layer`` appends one more random residual block, the layer SD 2.x skips.
    """
    import torch

    plain = _plain(state)
    n = _layer_count(plain)
    out: dict[str, Any] = {_TOP[k]: v for k, v in plain.items() if k in _TOP}
    for layer in range(n):
        out.update(_fused_qkv(plain, layer))
        for key, value in plain.items():
            head = f"encoder.layers.{layer}."
            if not key.startswith(head) or (".self_attn." in key and "out_proj" not in key):
                continue
            rest = key[len(head):]
            new = next(sd + rest[len(hf):] for hf, sd in _BLOCK if rest.startswith(hf))
            out[f"transformer.resblocks.{layer}.{new}"] = value
    gen = torch.Generator().manual_seed(1234)
    width = plain["final_layer_norm.weight"].shape[0]
    if "text_projection.weight" in plain:
        out["text_projection"] = plain["text_projection.weight"].t().contiguous()
    else:
        out["text_projection"] = torch.randn(width, projection_dim or width, generator=gen)
    if extra_layer:
        for key in [k for k in out if k.startswith("transformer.resblocks.0.")]:
            new = key.replace("resblocks.0.", f"resblocks.{n}.", 1)
            out[new] = torch.randn(out[key].shape, generator=gen) * 0.02
    out["logit_scale"] = torch.tensor(4.6052)
    return out


def _clip_l(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """OpenAI CLIP as original checkpoints keep it: transformers' pre-5.0 names."""
    import torch

    out = {f"{prefix}text_model.{k}": v for k, v in _plain(state).items()}
    out[f"{prefix}text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return out


def _unet_vae(pipe: Any) -> dict[str, Any]:
    state = unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config))
    state.update(vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    return state


def _save(state: dict[str, Any], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def export_sd2_file(pipe: Any, path: Path) -> Path:
    """An SD 2.x single file: LDM UNet and VAE, OpenCLIP-H under ``cond_stage_model.model``."""
    state = _unet_vae(pipe)
    text = clip_to_openclip(pipe.text_encoder.state_dict(), extra_layer=True)
    state.update({f"cond_stage_model.model.{k}": v for k, v in text.items()})
    return _save(state, path)


def export_sdxl_file(pipe: Any, path: Path) -> Path:
    """An SDXL single file in SGM's layout; a pipeline without ``text_encoder`` (the refiner)
    keeps OpenCLIP-bigG as embedder 0, as the refiner's file does."""
    state = _unet_vae(pipe)
    openclip = clip_to_openclip(pipe.text_encoder_2.state_dict())
    slot = 0
    if pipe.text_encoder is not None:
        clip_l = pipe.text_encoder.state_dict()
        state.update(_clip_l(clip_l, "conditioner.embedders.0.transformer."))
        slot = 1
    state.update({f"conditioner.embedders.{slot}.model.{k}": v for k, v in openclip.items()})
    return _save(state, path)
