"""Memory and speed options as nodes between a loader and its users.

They return a re-wrapped model (same weights, no copy) carrying the option; the option is
applied to the module right before each use, so other branches using the same cached model
keep their own settings. Precision (fp16 / bf16) is LoadPipeline's `dtype` widget.
"""

from __future__ import annotations

from typing import Annotated

from graph_runtime import Bool, Choice, node
from nodes.types import VAE, UNet, require

SLICES = ["auto", "max", "off", "1", "2", "4", "8"]


@node("AttentionSlicing", category="settings", output="unet",
      display_name="Attention Slicing")
def attention_slicing(
    unet: UNet,
    slice_size: Annotated[str, Choice(
        SLICES, tooltip="auto: half the heads at a time; max: one at a time")] = "auto",
) -> UNet:
    """Compute attention in slices to cap peak memory (larger batches fit; a bit slower)."""
    require(unet, "AttentionSlicing", "unet")
    value: str | int | None
    if slice_size == "off":
        value = None
    elif slice_size.isdigit():
        value = int(slice_size)
    else:
        value = slice_size
    return unet.with_options(attention_slice=value)


@node("VAEOptions", category="settings", output="vae", display_name="VAE Options")
def vae_options(
    vae: VAE,
    tiling: Annotated[bool, Bool(tooltip="decode/encode in overlapping tiles (large images)")]
    = True,
    slicing: Annotated[bool, Bool(tooltip="decode/encode one image of a batch at a time")]
    = False,
) -> VAE:
    """VAE tiling and slicing: bound the VAE's memory by image size and by batch size."""
    require(vae, "VAEOptions", "vae")
    return vae.with_options(tiling=tiling, slicing=slicing)
