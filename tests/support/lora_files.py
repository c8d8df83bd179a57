"""Tiny random LoRA files for the tiny test models, in the layouts real files come in.

- kohya / A1111 (``lora_unet_...``, ``lora_te_`` or ``lora_te1_``/``lora_te2_`` for SDXL),
  with diffusers module names or, ``ldm_keys=True``, the original LDM UNet names kohya
  writes for SDXL;
- diffusers / PEFT (``unet.<path>.lora_A.weight``, ``text_encoder.text_model....``).

Every Linear and Conv2d of the UNet and every Linear of the text encoders' transformer
layers gets a LoRA (``skip`` leaves some out). Values are random with std 0.1 per factor,
large enough that a strength change visibly changes an image. ``components`` is a loaded
``Components`` (anything with ``unet`` / ``text_encoder`` / ``text_encoder_2``
attributes) or a mapping from those names to modules (None = absent).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests.support.ldm_export import unet_to_ldm

NAMES = ("unet", "text_encoder", "text_encoder_2")
STD = 0.1


def component_map(components: Any) -> dict[str, nn.Module | None]:
    """``components`` as {"unet", "text_encoder", "text_encoder_2" -> module or None}."""
    if isinstance(components, Mapping):
        return {n: components.get(n) for n in NAMES}
    return {n: getattr(components, n, None) for n in NAMES}


def lora_layers(module: nn.Module, component: str) -> list[str]:
    """Module paths a LoRA patches: every Linear / Conv2d of a UNet; the Linear layers of a
    text encoder's transformer layers (what kohya and diffusers train)."""
    kinds = (nn.Linear, nn.Conv2d) if component == "unet" else (nn.Linear,)
    return [name for name, sub in module.named_modules()
            if isinstance(sub, kinds) and (component == "unet" or ".layers." in name)]


def text_model_path(path: str) -> str:
    """A text-encoder path as files spell it, under ``text_model.`` whatever the class."""
    return path if path.startswith("text_model.") else f"text_model.{path}"


def ldm_unet_name(path: str, unet: nn.Module) -> str:
    """Our diffusers UNet module path -> its name in the original LDM layout."""
    config = dict(unet.config)
    (key,) = unet_to_ldm({f"{path}.weight": None}, config)
    return key.removeprefix("model.diffusion_model.").removesuffix(".weight")


def diffusers_mismapped(components: Any, ldm_keys: bool) -> tuple[str, ...]:
    """UNet layers diffusers' kohya loader (0.42) puts in the wrong place, to pass as
    ``skip`` when a file is to be compared with diffusers:

    - LDM names: the upsampler of an up block without attention (``output_blocks_N_1_conv``,
      SD 1.x's first up block) is taken for an attention. diffusers' SD 1.x pipeline also
      maps LDM names only when given ``unet_config=pipe.unet.config`` in
      ``load_lora_weights``; the SDXL pipeline passes it itself.
    - diffusers names: SDXL's ``add_embedding.linear_N`` loses its index (kohya writes SDXL
      files with LDM names, where ``label_emb_0_N`` maps correctly).
    """
    unet = component_map(components)["unet"]
    if unet is None:
        return ()
    if ldm_keys:
        ups = list(unet.config["up_block_types"])[:-1]
        return tuple(f"up_blocks.{i}.upsamplers.0.conv" for i, kind in enumerate(ups)
                     if "CrossAttn" not in kind)
    if getattr(unet, "add_embedding", None) is None:
        return ()
    return ("add_embedding.linear_1", "add_embedding.linear_2")


def lora_pair(layer: nn.Module, rank: int, gen: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (down, up) for a Linear ``[r, in] / [out, r]`` or a Conv2d
    ``[r, in, kh, kw] / [out, r, 1, 1]`` (kohya's LoCon shapes)."""
    weight = layer.weight
    if weight.ndim == 4:
        down_shape = (rank, *weight.shape[1:])
        up_shape = (weight.shape[0], rank, 1, 1)
    else:
        down_shape, up_shape = (rank, weight.shape[1]), (weight.shape[0], rank)
    down = torch.randn(down_shape, generator=gen) * STD
    up = torch.randn(up_shape, generator=gen) * STD
    return down, up


def _kohya_prefixes(parts: Mapping[str, nn.Module | None]) -> dict[str, str]:
    """SD 1.x/2.x: one ``lora_te_``; SDXL (a second encoder): ``lora_te1_`` and ``lora_te2_``."""
    sdxl = parts.get("text_encoder_2") is not None
    return {"unet": "lora_unet_", "text_encoder": "lora_te1_" if sdxl else "lora_te_",
            "text_encoder_2": "lora_te2_"}


def _targets(components: Any, text: bool, skip: Iterable[str]
             ) -> list[tuple[str, str, nn.Module]]:
    """(component, module path, layer) for every layer a file gets, in a fixed order."""
    parts = component_map(components)
    skipped = set(skip)
    out = []
    for component in NAMES:
        module = parts[component]
        if module is None or (component != "unet" and not text):
            continue
        for path in lora_layers(module, component):
            if path not in skipped:
                out.append((component, path, module.get_submodule(path)))
    return out


def kohya_state(components: Any, rank: int = 4, alpha: float | None = 2.0, seed: int = 0,
                ldm_keys: bool = False, text: bool = True, skip: Iterable[str] = ()
                ) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA state dict (``alpha=None`` writes no alpha keys)."""
    parts = component_map(components)
    prefixes = _kohya_prefixes(parts)
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for component, path, layer in _targets(components, text, skip):
        if component == "unet":
            unet = parts["unet"]
            assert unet is not None
            name = ldm_unet_name(path, unet) if ldm_keys else path
        else:
            name = text_model_path(path)
        key = prefixes[component] + name.replace(".", "_")
        down, up = lora_pair(layer, rank, gen)
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        if alpha is not None:
            state[f"{key}.alpha"] = torch.tensor(float(alpha))
    return state


def peft_state(components: Any, rank: int = 4, seed: int = 0, text: bool = True,
               skip: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """A diffusers / PEFT-layout LoRA state dict (no alphas: scale 1, PEFT's default when
    lora_alpha equals the rank)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for component, path, layer in _targets(components, text, skip):
        name = path if component == "unet" else text_model_path(path)
        down, up = lora_pair(layer, rank, gen)
        state[f"{component}.{name}.lora_A.weight"] = down
        state[f"{component}.{name}.lora_B.weight"] = up
    return state


def save_lora(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Write a state dict as .safetensors, or as a torch pickle for any other suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path))
    else:
        torch.save(tensors, str(path))
    return path


def write_kohya_lora(path: Path, components: Any, rank: int = 4, alpha: float | None = 2.0,
                     seed: int = 0, ldm_keys: bool = False, text: bool = True,
                     skip: Iterable[str] = ()) -> Path:
    """Write ``kohya_state(...)`` to ``path`` and return it."""
    return save_lora(kohya_state(components, rank, alpha, seed, ldm_keys, text, skip), path)


def write_peft_lora(path: Path, components: Any, rank: int = 4, seed: int = 0,
                    text: bool = True, skip: Iterable[str] = ()) -> Path:
    """Write ``peft_state(...)`` to ``path`` and return it."""
    return save_lora(peft_state(components, rank, seed, text, skip), path)
