"""ControlNets in the pack's sampling, as ComfyUI runs them.

Each conditioning entry may carry controls (ControlNetApply / ControlNetApplyAdvanced, or
our ApplyControlNet; the option `nodes.control_guidance.CONTROL_OPTION`). When entries run
as one batched UNet call, their controls run on the same batch (UNet input, timestep and
text embeddings) and their residuals, times each control's strength, are summed and added to
the UNet's skip connections. A control applies while the step's sigma lies inside its
[start, end] percent range (ComfyUI's sigma rule, as for ConditioningSetTimestepRange). Its
image is centre-cropped to the latent's aspect ratio and resized nearest-exact to the latent
size times the ControlNet's downsampling; a `resize="diffusers"` control (our own
ApplyControlNet) keeps diffusers' plain nearest resize.
ControlNetApply's control (positive only, `control_apply_to_uncond`) is copied onto the
negative side's area-less entries, as ComfyUI's samplers do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nodes.control_guidance import (
    CONTROL_OPTION,
    Control,
    control_image,
    downscale_factor,
    residual_kwargs,
)
from nodes.lazy import lazy_module

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

APPLY_TO_UNCOND = "control_apply_to_uncond"


def entry_controls(options: Mapping[str, Any]) -> tuple[Control, ...]:
    return tuple(options.get(CONTROL_OPTION, ()))


def same_controls(a: Sequence[Control], b: Sequence[Control]) -> bool:
    """Whether two entries' controls are the same objects (then they batch together)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def crop_resize(pixels: Tensor, height: int, width: int) -> Tensor:
    """`[B, C, H, W]` cropped about the centre to the target's aspect ratio, then resized
    nearest-exact (ComfyUI's `common_upscale(..., "nearest-exact", "center")`)."""
    old_h, old_w = int(pixels.shape[-2]), int(pixels.shape[-1])
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    cropped = pixels.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)
    return F.interpolate(cropped, size=(height, width), mode="nearest-exact")


def comfy_hint(control: Control, latent_hw: Sequence[int], batch: int,
               device: torch.device, dtype: torch.dtype) -> Tensor:
    """The control image for a batch of `batch` items, by the control's resize rule."""
    if control.resize != "comfy":
        return control_image(control, latent_hw, batch, device, dtype)
    f = downscale_factor(control.model)
    pixels = control.image.permute(0, 3, 1, 2).to(torch.float32)
    wanted = int(control.model.config["conditioning_channels"])
    if pixels.shape[1] == 1 and wanted != 1:
        pixels = pixels.expand(-1, wanted, -1, -1)
    pixels = crop_resize(pixels[:, :wanted], int(latent_hw[0]) * f, int(latent_hw[1]) * f)
    n = pixels.shape[0]
    pixels = pixels.repeat(-(-batch // n), 1, 1, 1)[:batch]
    return pixels.to(device, dtype)


class ControlResiduals:
    """The UNet's extra inputs for one batched call, from the entries' controls."""

    def __init__(self, percent_to_sigma: Any) -> None:
        self.percent_to_sigma = percent_to_sigma

    def active(self, control: Control, sigma: float) -> bool:
        start = self.percent_to_sigma(control.start)
        end = self.percent_to_sigma(control.end)
        return not (sigma > start or sigma < end)

    def __call__(self, controls: Sequence[Control], x_in: Tensor, t: Tensor, contexts: Tensor,
                 sigma: float, added: Mapping[str, Tensor] | None) -> dict[str, Any]:
        summed: list[tuple[list[Tensor], Tensor]] = []
        for c in controls:
            if not self.active(c, sigma):
                continue
            model = c.model
            hint = comfy_hint(c, x_in.shape[-2:], int(x_in.shape[0]), model.device,
                              model.dtype)
            extra = ({"added_cond_kwargs": added}
                     if getattr(model, "needs_text_time", False) else {})
            d, m = model(x_in.to(model.device, model.dtype), t,
                         contexts.to(model.device, model.dtype), hint,
                         conditioning_scale=c.strength, **extra)
            summed.append(([r.to(x_in.device, x_in.dtype) for r in d],
                           m.to(x_in.device, x_in.dtype)))
        return residual_kwargs(summed)


def controls_to_uncond(positive: Sequence[Any], negative: list[Any],
                       flags: Sequence[bool]) -> None:
    """Copy ControlNetApply's controls (`flags`: the positive entries marked to apply to
    the unconditional side) onto the negative's area-less entries without one (in place),
    unless a negative entry already has controls."""
    if any(e.area is None and e.controls for e in negative):
        return
    sources = [e.controls for e, flag in zip(positive, flags, strict=True)
               if flag and e.area is None and e.controls]
    targets = [i for i, e in enumerate(negative) if e.area is None and not e.controls]
    if not targets:
        return
    for n, controls in enumerate(sources):
        i = targets[n % len(targets)]
        if negative[i].controls:
            negative.append(replace(negative[i], controls=controls))
        else:
            negative[i] = replace(negative[i], controls=controls)
