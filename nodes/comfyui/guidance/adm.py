"""SDXL's second conditioning input, per conditioning entry, with ComfyUI's defaults.

An SDXL UNet takes, next to the text embeddings, the pooled text embedding and a few
micro-conditioning numbers (ComfyUI's `y` from `encode_adm`; our UNet's
`added_cond_kwargs`: `text_embeds` and `time_ids`). The base takes original size, crop
offset and target size; the refiner takes original size, crop offset and an aesthetic
score. A number the entry does not set defaults as in ComfyUI's samplers: the size to the
latent's size in pixels (8 per cell), the target size to the original size, crops to 0, and
the aesthetic score to 6 on the positive side and 2.5 on the negative side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodes.comfyui.latent import CELL
from nodes.lazy import lazy_module
from nodes.micro_conditioning import AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE, time_id_count

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")

BASE_IDS = ("height", "width", "crop_h", "crop_w", "target_height", "target_width")
REFINER_IDS = ("height", "width", "crop_h", "crop_w", "aesthetic_score")


@dataclass(frozen=True, eq=False)
class Added:
    """One entry's added inputs: pooled embedding `[N, P]` and micro-conditioning `[1, K]`."""

    text_embeds: Tensor
    time_ids: Tensor


def needs_added(net: torch.nn.Module) -> bool:
    return bool(getattr(net, "needs_text_time", False))


def _time_id_names(net: torch.nn.Module, pooled_width: int, side: str) -> tuple[str, ...]:
    """Base or refiner numbers, told apart by how many the UNet's added embedding takes
    besides the pooled embedding."""
    count = time_id_count(net.config, pooled_width)
    by_count = {len(BASE_IDS): BASE_IDS, len(REFINER_IDS): REFINER_IDS}
    if count is None:
        raise ValueError(f"input {side!r}: its pooled text embedding is {pooled_width} wide, "
                         "which does not fit this SDXL model; encode the prompt with the "
                         "CLIP of the same checkpoint")
    return by_count[count]


def time_ids(options: Mapping[str, Any], names: tuple[str, ...], *, negative: bool,
             latent_height: int, latent_width: int) -> Tensor:
    """The micro-conditioning numbers `[1, K]` of one entry, defaults filled in."""
    values = dict(options)
    values.setdefault("width", latent_width * CELL)
    values.setdefault("height", latent_height * CELL)
    values.setdefault("crop_w", 0)
    values.setdefault("crop_h", 0)
    values.setdefault("target_width", values["width"])
    values.setdefault("target_height", values["height"])
    values.setdefault("aesthetic_score",
                      NEGATIVE_AESTHETIC_SCORE if negative else AESTHETIC_SCORE)
    return torch.tensor([[float(values[n]) for n in names]], dtype=torch.float32)


def added_inputs(options: Mapping[str, Any], net: torch.nn.Module, side: str,
                 latent_height: int, latent_width: int, device: torch.device) -> Added:
    """The added inputs of one entry on `side` ("positive" or "negative")."""
    pooled = options.get("pooled_output")
    if not isinstance(pooled, torch.Tensor):
        raise ValueError(f"input {side!r}: this SDXL model needs the pooled text embedding "
                         "('pooled_output') that ComfyUI's text encoders give, and this "
                         "conditioning has none; encode the prompt with CLIPTextEncode from "
                         "an SDXL checkpoint's CLIP")
    pooled = pooled.reshape(-1, pooled.shape[-1])
    names = _time_id_names(net, int(pooled.shape[-1]), side)
    ids = time_ids(options, names, negative=side == "negative", latent_height=latent_height,
                   latent_width=latent_width)
    return Added(pooled.to(device, torch.float32), ids.to(device))
