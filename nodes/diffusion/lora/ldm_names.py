"""kohya names in the original LDM / SGM UNet layout -> our diffusers module paths.

kohya's trainer builds SDXL (and some SD 1.x setups) on the original UNet, so its files
name layers like ``input_blocks_4_1_transformer_blocks_0_attn1_to_k`` or
``output_blocks_2_2_conv``. The block part of such a name (``input_blocks_4_1``) is
unambiguous, so it is parsed by pattern and renamed with the single-file checkpoint
converter (``ldm_convert.convert_unet``, which knows the layout from the UNet's config); the
layer part inside a block is the same in both layouts except for resnets (``in_layers_2``
...), whose few names are spelled out here. The result is then looked up among the UNet's
modules like any other underscore name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..ldm_convert import convert_unet
from ..storage import WeightsError

# Block heads: (pattern, dotted LDM prefix builder). The tail after the head stays
# underscore-spelled unless it is one of the resnet / sampler layer names below.
_BLOCK = re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)(?:_(.+))?$")
_MIDDLE = re.compile(r"^middle_block_(\d+)(?:_(.+))?$")
_FIXED = re.compile(r"^(time_embed|out|label_emb_0)_(\d+)$")

# Layer names inside an LDM resnet / sampler whose underscore form hides a dot.
_LDM_LAYERS = {
    "in_layers_0": "in_layers.0", "in_layers_2": "in_layers.2",
    "emb_layers_1": "emb_layers.1", "out_layers_0": "out_layers.0",
    "out_layers_3": "out_layers.3", "skip_connection": "skip_connection",
    "op": "op", "conv": "conv",
}


def is_ldm_name(name: str) -> bool:
    """Whether a kohya UNet name (``lora_unet_`` stripped) uses the LDM layout."""
    return bool(_BLOCK.match(name) or _MIDDLE.match(name) or _FIXED.match(name))


def _ldm_key(name: str) -> str | None:
    """The dotted LDM parameter key (``....weight``) a kohya LDM name stands for."""
    if m := _FIXED.match(name):
        head = m.group(1).replace("label_emb_0", "label_emb.0")
        return f"{head}.{m.group(2)}.weight"
    if m := _BLOCK.match(name):
        head, tail = f"{m.group(1)}.{m.group(2)}.{m.group(3)}", m.group(4)
    elif m := _MIDDLE.match(name):
        head, tail = f"middle_block.{m.group(1)}", m.group(2)
    else:
        return None
    if tail is None:
        return f"{head}.weight"
    return f"{head}.{_LDM_LAYERS.get(tail, tail)}.weight"


def ldm_to_diffusers_name(name: str, config: Mapping[str, Any]) -> str | None:
    """The diffusers module path, still underscore-spelled (``down_blocks_1_attentions_0_
    transformer_blocks_0_attn1_to_k``), for a kohya LDM name; None if it is not one.

    Only the block part is converted; the caller resolves the underscore spelling against
    the UNet's modules.
    """
    key = _ldm_key(name)
    if key is None:
        return None
    try:
        converted = next(iter(convert_unet({key: None}, config)))  # type: ignore[dict-item]
    except (WeightsError, KeyError, ValueError, TypeError):
        return None
    return converted.removesuffix(".weight").replace(".", "_")
