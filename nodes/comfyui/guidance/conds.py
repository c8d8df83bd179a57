"""Conditioning entries resolved for one sampling run, and their weight at each step.

ComfyUI lets several conditioning entries share the prediction: each entry may cover an
area of the latent (ConditioningSetArea), carry a strength, a mask, or apply only over a
range of the sampling (ConditioningSetTimestepRange). At a step, every entry that applies
predicts its area, and the predictions are averaged cell by cell, weighted by strength and
mask. An area that does not reach the latent's edge fades in over up to 8 cells, so area
borders do not show as seams. Areas are in latent cells (ComfyUI's pixels / 8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nodes.comfyui.guidance.adm import Added
from nodes.comfyui.guidance.control import entry_controls
from nodes.control_guidance import Control
from nodes.lazy import lazy_module
from nodes.types import CondPart

if TYPE_CHECKING:
    from nodes.diffusion.ksampling import DiscreteSampling
if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

FEATHER = 8
# Areas are kept as (height, width, y, x).
Area = tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)
class Entry:
    """One conditioning entry prepared for a latent size: where, how strongly and when."""

    embeds: Tensor
    area: Area | None = None
    strength: float = 1.0
    mask: Tensor | None = None  # [B, H, W] at the latent's size
    mask_strength: float = 1.0
    sigma_start: float | None = None  # applies while sigma <= sigma_start
    sigma_end: float | None = None  # ... and sigma >= sigma_end
    added: Added | None = None  # SDXL's pooled embedding and micro-conditioning
    controls: tuple[Control, ...] = ()  # ControlNets steering this entry's prediction


@dataclass(frozen=True, eq=False)
class Applied:
    """An entry at one step: the input it sees, its weights and where they go."""

    entry: Entry
    x: Tensor
    mult: Tensor
    area: Area | None


def _area(value: Any, height: int, width: int) -> Area:
    if value[0] == "percentage":
        h, w, y, x = (float(v) for v in value[1:5])
        return (max(1, round(h * height)), max(1, round(w * width)), round(y * height),
                round(x * width))
    h, w, y, x = (int(v) for v in value[:4])
    return h, w, y, x


def _fit_mask(mask: Tensor, height: int, width: int) -> Tensor:
    """A mask `[B, H, W]` (or `[H, W]`) resized bilinearly to the latent size."""
    mask = mask.float()
    if mask.ndim == 2:
        mask = mask[None]
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(mask[:, None], size=(height, width), mode="bilinear")[:, 0]
    return mask


def _mask_bounds(mask: Tensor) -> Area:
    """The smallest area holding every nonzero cell of any mask of the batch, at least
    8 x 8 cells; (8, 8, 0, 0) for an empty mask (the entry then adds nothing)."""
    covered = mask.abs().amax(dim=0) != 0
    if not bool(covered.any()):
        return 8, 8, 0, 0
    ys, xs = torch.where(covered)
    y0, x0 = int(ys.min()), int(xs.min())
    return max(8, int(ys.max()) - y0 + 1), max(8, int(xs.max()) - x0 + 1), y0, x0


def resolve(parts: Sequence[CondPart], sampling: DiscreteSampling, height: int, width: int,
            device: torch.device) -> list[Entry]:
    """The entries of a conditioning for a latent of `height` x `width` cells, their
    embeddings on `device`."""
    entries = []
    for part in parts:
        opts = part.options
        area = _area(opts["area"], height, width) if "area" in opts else None
        mask = opts.get("mask")
        if mask is not None:
            mask = _fit_mask(mask, height, width).to(device)
            if opts.get("set_area_to_bounds", False):
                area = _mask_bounds(mask)
        start, end = opts.get("start_percent"), opts.get("end_percent")
        entries.append(Entry(
            embeds=part.embeds.to(device, torch.float32),
            area=area,
            strength=float(opts.get("strength", 1.0)),
            mask=mask,
            mask_strength=float(opts.get("mask_strength", 1.0)),
            sigma_start=None if start is None else sampling.percent_to_sigma(float(start)),
            sigma_end=None if end is None else sampling.percent_to_sigma(float(end)),
            controls=entry_controls(opts),
        ))
    return entries


def _inside(inner: Area, outer: Area) -> bool:
    return (inner[2] >= outer[2] and inner[3] >= outer[3]
            and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


def _add_same_area(entries: list[Entry], model: Entry) -> None:
    """Give `entries` an entry over `model`'s area, when none has that exact area. Its
    embeddings are those of the smallest entry covering the area (or of an area-less one),
    so where one side of the guidance is confined to an area the other side is too (with
    its SDXL inputs, as ComfyUI copies that entry's model conditioning)."""
    if model.area is None:
        return
    smallest: Entry | None = None
    for other in entries:
        if other.area is not None:
            if _inside(model.area, other.area) and (
                    smallest is None or smallest.area is None
                    or math.prod(smallest.area[:2]) > math.prod(other.area[:2])):
                smallest = other
        elif smallest is None:
            smallest = other
    if smallest is None or smallest.area == model.area:
        return
    entries.append(replace(model, embeds=smallest.embeds, added=smallest.added))


def mirror_areas(positive: list[Entry], negative: list[Entry] | None) -> None:
    """Pair every area of each side with one on the other side (in place)."""
    if negative is None:
        return
    for entry in list(positive):
        _add_same_area(negative, entry)
    for entry in list(negative):
        _add_same_area(positive, entry)


def _feather(mult: Tensor, area: Area, full: tuple[int, int]) -> None:
    """Fade the weights in over up to 8 cells at area borders inside the latent."""
    for dim, (size, offset, extent) in enumerate(((area[0], area[2], full[0]),
                                                   (area[1], area[3], full[1]))):
        axis = 2 + dim
        ramp = min(FEATHER, mult.shape[axis] // 4)
        for t in range(ramp):
            factor = (t + 1) / ramp
            if offset != 0:
                mult.narrow(axis, t, 1).mul_(factor)
            if offset + size < extent:
                mult.narrow(axis, size - 1 - t, 1).mul_(factor)


def apply(entry: Entry, x: Tensor, sigma: float) -> Applied | None:
    """The entry at noise level `sigma` for samples `x`; None when it does not apply."""
    if entry.sigma_start is not None and sigma > entry.sigma_start:
        return None
    if entry.sigma_end is not None and sigma < entry.sigma_end:
        return None
    full = (int(x.shape[2]), int(x.shape[3]))
    area = entry.area
    view = x
    if area is not None:
        h = min(full[0] - area[2], area[0])
        w = min(full[1] - area[3], area[1])
        area = (h, w, area[2], area[3])
        view = x[:, :, area[2]: area[2] + h, area[3]: area[3] + w]
    if entry.mask is not None:
        mask = entry.mask[: view.shape[0]]
        if area is not None:
            mask = mask[:, area[2]: area[2] + area[0], area[3]: area[3] + area[1]]
        mask = (mask * entry.mask_strength)[:, None]
        mult = mask.repeat(view.shape[0] // mask.shape[0], view.shape[1], 1, 1)
    else:
        mult = torch.ones_like(view)
    mult = mult * entry.strength
    if entry.mask is None and area is not None:
        _feather(mult, area, full)
    return Applied(entry, view, mult, area)
