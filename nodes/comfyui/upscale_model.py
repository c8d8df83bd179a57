"""ComfyUI's upscale model nodes: UpscaleModelLoader and ImageUpscaleWithModel, over the
loading and tiling our own LoadUpscaleModel and UpscaleImage use (`nodes.upscale_model`).

ImageUpscaleWithModel has no tiling inputs in ComfyUI: it runs 512-pixel tiles with a
32-pixel overlap and ComfyUI's feathered blend, halving the tile on running out of memory.
"""

from __future__ import annotations

from typing import Annotated

from graph_runtime import Choice, folders, node
from nodes.types import Image
from nodes.upscale_model import (
    UpscaleModel,
    load_upscale_model,
    upscale_model_choices,
    upscale_model_fingerprint,
    upscale_pixels,
)

TILE, OVERLAP = 512, 32


@node("UpscaleModelLoader", category="ComfyUI/loaders", output="UPSCALE_MODEL",
      fingerprint=upscale_model_fingerprint("model_name"), display_name="Load Upscale Model")
def upscale_model_loader(
    model_name: Annotated[str, Choice(upscale_model_choices)] = "",
) -> UpscaleModel:
    """Load an upscale model from the upscale_models folders."""
    return load_upscale_model(model_name, folders(), "UpscaleModelLoader")


@node("ImageUpscaleWithModel", category="ComfyUI/image/upscaling", output="IMAGE",
      display_name="Upscale Image (using Model)")
def image_upscale_with_model(upscale_model: UpscaleModel, image: Image) -> Image:
    """Enlarge images with an upscale model, tile by tile."""
    return upscale_pixels(upscale_model, image, TILE, OVERLAP, margin=0.0)
