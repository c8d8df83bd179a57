"""ComfyUI's ControlNet nodes: ControlNetLoader, ControlNetApply (its older node, which
steers the unconditional side too) and ControlNetApplyAdvanced (both sides, a range of
the sampling).

They put a control on every entry of the conditionings they receive (copies); the pack's
samplers run it with the entry (`nodes.comfyui.guidance.control`). The ControlNet value is
the one our LoadControlNet gives, so either loader feeds either kind of node.
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from graph_runtime import Choice, Float, node
from nodes.comfyui.guidance.control import APPLY_TO_UNCOND, entry_controls
from nodes.control_guidance import CONTROL_OPTION, Control
from nodes.controlnet import (
    ControlNet,
    Threshold,
    canny_edges,
    controlnet_choices,
    controlnet_fingerprint,
    load_controlnet,
)
from nodes.types import VAE, Conditioning, Image

Strength = Annotated[float, Float(min=0.0, max=10.0, step=0.01)]
Percent = Annotated[float, Float(min=0.0, max=1.0, step=0.001)]
ControlNetName = Annotated[str, Choice(controlnet_choices)]


def _renamed_fingerprint(inputs: dict[str, Any], run_folders: Any) -> str | None:
    return controlnet_fingerprint({"source": inputs.get("control_net_name")}, run_folders)


@node("ControlNetLoader", category="ComfyUI/loaders", output="CONTROL_NET",
      display_name="Load ControlNet Model", fingerprint=_renamed_fingerprint)
def controlnet_loader(control_net_name: ControlNetName = "") -> ControlNet:
    """A ControlNet from models/controlnet (an original single file or a diffusers
    folder)."""
    if not control_net_name:
        raise ValueError("ControlNetLoader: input 'control_net_name': choose a ControlNet "
                         "(models/controlnet is empty or nothing is selected)")
    return load_controlnet(control_net_name)


def _controlled(conditioning: Conditioning, made: dict[tuple[int, ...], Control],
                make: Any, **flags: Any) -> Conditioning:
    """Every entry with one more control; entries that had the same controls share the new
    one (so positive and negative entries still batch together)."""
    parts = []
    for part in conditioning.parts:
        before = entry_controls(part.options)
        key = tuple(id(c) for c in before)
        if key not in made:
            made[key] = make()
        parts.append(part.with_options(**{CONTROL_OPTION: (*before, made[key])}, **flags))
    return Conditioning.from_parts(parts, conditioning.prompts)


def _control(control_net: ControlNet, image: Image, strength: float, start: float = 0.0,
             end: float = 1.0) -> Any:
    return lambda: Control(control_net.model, image.pixels, float(strength), float(start),
                           float(end), label=control_net.source, resize="comfy")


@node("ControlNetApply", category="ComfyUI/conditioning/controlnet", output="CONDITIONING",
      display_name="Apply ControlNet (OLD)")
def controlnet_apply(conditioning: Conditioning, control_net: ControlNet, image: Image,
                     strength: Strength = 1.0) -> Conditioning:
    """Steer the conditioning with a control image over the whole sampling; the samplers
    apply it to the unconditional side too."""
    if strength == 0:
        return conditioning
    return _controlled(conditioning, {}, _control(control_net, image, strength),
                       **{APPLY_TO_UNCOND: True})


class PositiveNegative(NamedTuple):
    positive: Conditioning
    negative: Conditioning


@node("ControlNetApplyAdvanced", category="ComfyUI/conditioning/controlnet",
      display_name="Apply ControlNet")
def controlnet_apply_advanced(positive: Conditioning, negative: Conditioning,
                              control_net: ControlNet, image: Image,
                              strength: Strength = 1.0, start_percent: Percent = 0.0,
                              end_percent: Percent = 1.0,
                              vae: VAE | None = None) -> PositiveNegative:
    """Steer both conditionings with a control image over [start_percent, end_percent] of
    the sampling. `vae` is for ControlNets that take latents (not supported here)."""
    if strength == 0:
        return PositiveNegative(positive, negative)
    made: dict[tuple[int, ...], Control] = {}
    make = _control(control_net, image, strength, start_percent, end_percent)
    return PositiveNegative(_controlled(positive, made, make, **{APPLY_TO_UNCOND: False}),
                            _controlled(negative, made, make, **{APPLY_TO_UNCOND: False}))


@node("Canny", category="ComfyUI/image/preprocessors", output="IMAGE")
def canny(image: Image, low_threshold: Threshold = 0.4,
          high_threshold: Threshold = 0.8) -> Image:
    """Canny edges (kornia) as a white-on-black image, for a canny ControlNet."""
    return Image(canny_edges(image.pixels, low_threshold, high_threshold))
