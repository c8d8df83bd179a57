"""ComfyUI's text encoding and conditioning nodes.

A conditioning here is a list of entries (see `nodes.types.Conditioning`); these nodes
encode text into one entry, join lists, or set options on every entry of a list: an area
of the image with a strength, a mask, a part of the sampling run. The samplers read the
options (`nodes.comfyui.guidance`).
"""

from __future__ import annotations

from typing import Annotated, Any

from graph_runtime import Choice, Float, Int, Text, node
from nodes.comfyui import clip_text
from nodes.comfyui.prompt_embeddings import check_embeddings, embeddings_changed, run_lookup
from nodes.comfyui.types import Clip
from nodes.lazy import lazy_module
from nodes.types import Conditioning, CondPart, Mask

torch = lazy_module("torch")

MAX_RESOLUTION = 16384
AreaSize = Annotated[int, Int(min=64, max=MAX_RESOLUTION, step=8)]
AreaOffset = Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)]
Strength = Annotated[float, Float(min=0.0, max=10.0, step=0.01)]
Fraction = Annotated[float, Float(min=0.0, max=1.0, step=0.01)]
Percent = Annotated[float, Float(min=0.0, max=1.0, step=0.001)]


def _set(conditioning: Conditioning, **values: Any) -> Conditioning:
    """The same entries with `values` set on each."""
    parts = [part.with_options(**values) for part in conditioning.parts]
    return Conditioning.from_parts(parts, conditioning.prompts)


@node("CLIPTextEncode", category="ComfyUI/conditioning", output="CONDITIONING",
      display_name="CLIP Text Encode (Prompt)", check_inputs=check_embeddings("text"),
      fingerprint=embeddings_changed("text"))
def clip_text_encode(text: Annotated[str, Text(multiline=True)] = "", *,
                     clip: Clip) -> Conditioning:
    """Encode a prompt as ComfyUI does: no truncation (77-token windows, concatenated),
    `(words:1.2)` weights, `embedding:name` (models/embeddings) and the CLIP's last layer
    setting."""
    with run_lookup() as lookup:
        embeds, pooled = clip_text.encode(clip, text, lookup)
    return Conditioning(embeds, prompts=(text,), options={"pooled_output": pooled})


@node("CLIPSetLastLayer", category="ComfyUI/conditioning", output="CLIP",
      display_name="CLIP Set Last Layer")
def clip_set_last_layer(
    clip: Clip,
    stop_at_clip_layer: Annotated[int, Int(min=-24, max=-1)] = -1,
) -> Clip:
    """Use an earlier layer of the text encoder ("clip skip"): -1 is the last layer, -2 the
    one before it, and so on."""
    return clip.with_layer(stop_at_clip_layer)


@node("ConditioningCombine", category="ComfyUI/conditioning", output="CONDITIONING",
      display_name="Conditioning (Combine)")
def conditioning_combine(conditioning_1: Conditioning,
                         conditioning_2: Conditioning) -> Conditioning:
    """Both lists of entries as one: the samplers average their predictions."""
    return Conditioning.from_parts([*conditioning_1.parts, *conditioning_2.parts],
                                   conditioning_1.prompts + conditioning_2.prompts)


@node("ConditioningSetArea", category="ComfyUI/conditioning", output="CONDITIONING",
      display_name="Conditioning (Set Area)")
def conditioning_set_area(
    conditioning: Conditioning,
    width: AreaSize = 64,
    height: AreaSize = 64,
    x: AreaOffset = 0,
    y: AreaOffset = 0,
    strength: Strength = 1.0,
) -> Conditioning:
    """Confine the conditioning to a rectangle of the image (pixels; applied in 8-pixel
    latent cells), with a strength against other entries there."""
    return _set(conditioning, area=(height // 8, width // 8, y // 8, x // 8),
                strength=strength, set_area_to_bounds=False)


@node("ConditioningSetAreaPercentage", category="ComfyUI/conditioning",
      output="CONDITIONING", display_name="Conditioning (Set Area with Percentage)")
def conditioning_set_area_percentage(
    conditioning: Conditioning,
    width: Fraction = 1.0,
    height: Fraction = 1.0,
    x: Fraction = 0.0,
    y: Fraction = 0.0,
    strength: Strength = 1.0,
) -> Conditioning:
    """Confine the conditioning to a rectangle given as fractions of the image size."""
    return _set(conditioning, area=("percentage", height, width, y, x), strength=strength,
                set_area_to_bounds=False)


@node("ConditioningSetAreaStrength", category="ComfyUI/conditioning",
      output="CONDITIONING", display_name="ConditioningSetAreaStrength")
def conditioning_set_area_strength(conditioning: Conditioning,
                                   strength: Strength = 1.0) -> Conditioning:
    """Weigh the conditioning against the other entries it is combined with."""
    return _set(conditioning, strength=strength)


@node("ConditioningSetMask", category="ComfyUI/conditioning", output="CONDITIONING",
      display_name="Conditioning (Set Mask)")
def conditioning_set_mask(
    conditioning: Conditioning,
    mask: Mask,
    strength: Strength = 1.0,
    set_cond_area: Annotated[str, Choice(["default", "mask bounds"])] = "default",
) -> Conditioning:
    """Weigh the conditioning by a mask (resized to the latent); "mask bounds" also runs
    it on the mask's bounding box only."""
    values = mask.mask if mask.mask.ndim >= 3 else mask.mask[None]
    return _set(conditioning, mask=values, set_area_to_bounds=set_cond_area != "default",
                mask_strength=strength)


@node("ConditioningZeroOut", category="ComfyUI/advanced/conditioning",
      output="CONDITIONING", display_name="ConditioningZeroOut")
def conditioning_zero_out(conditioning: Conditioning) -> Conditioning:
    """The same entries with all-zero embeddings (and pooled outputs)."""
    parts = []
    for part in conditioning.parts:
        options = dict(part.options)
        if isinstance(options.get("pooled_output"), torch.Tensor):
            options["pooled_output"] = torch.zeros_like(options["pooled_output"])
        parts.append(CondPart(torch.zeros_like(part.embeds), options))
    return Conditioning.from_parts(parts, conditioning.prompts)


@node("ConditioningSetTimestepRange", category="ComfyUI/advanced/conditioning",
      output="CONDITIONING", display_name="ConditioningSetTimestepRange")
def conditioning_set_timestep_range(conditioning: Conditioning, start: Percent = 0.0,
                                    end: Percent = 1.0) -> Conditioning:
    """Apply the conditioning only from `start` to `end` of the sampling run (0 is the
    first step, at pure noise; 1 the end)."""
    return _set(conditioning, start_percent=start, end_percent=end)
