"""Making pictures bigger: resizing latents (the middle of a "hires fix": generate small,
enlarge the latents, denoise again at part strength) and images, and upscale models
(ESRGAN and its family) run in tiles.

Latent sizes are in pixels, at the latents' own pixels per cell (8 for every SD VAE, 1 for
pixel-space models), like RandomLatents'. A resized latent keeps its seeds and random
streams, so the second Denoise of a hires fix continues the streams a pair of diffusers
pipeline calls sharing one generator would use, and its `pixel_size` (SDXL's size
micro-conditioning) follows the new size. The maths is `nodes.resize`, shared with the
ComfyUI pack's LatentUpscale and ImageScale.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from graph_runtime import Choice, Float, Int, folders, node
from nodes.limits import require_pixels
from nodes.micro_conditioning import DEFAULT_VAE_FACTOR
from nodes.resize import CROPS, IMAGE_METHODS, LATENT_METHODS, upscale
from nodes.types import Image, Latent, require
from nodes.upscale_model import (
    UpscaleModel,
    load_upscale_model,
    upscale_model_choices,
    upscale_model_fingerprint,
    upscale_pixels,
)

LatentMethod = Annotated[str, Choice(LATENT_METHODS)]
ImageMethod = Annotated[str, Choice(IMAGE_METHODS)]
Crop = Annotated[str, Choice(CROPS, tooltip="center: cut to the new aspect ratio first")]
Size = Annotated[int, Int(min=0, max=16384, step=8, tooltip="0: keep the aspect ratio")]
ScaleBy = Annotated[float, Float(min=0.01, max=8.0, step=0.01)]
# A tile edge ComfyUI uses; memory grows with its square.
TileSize = Annotated[int, Int(min=64, max=4096, step=8, tooltip=(
    "input pixels per tile side; smaller tiles use less memory"))]
Overlap = Annotated[int, Int(min=0, max=512, tooltip=(
    "input pixels neighbouring tiles share, blended to hide seams"))]
# Share of the overlap, at each inner tile edge, given no weight (see nodes.upscalers.tiles).
SEAM_MARGIN = 0.25


def cell_pixels(latents: Latent) -> int:
    """Pixels per latent cell: from the recorded pixel size, else 1 for pixel-space
    samples and 8 (every SD VAE) otherwise."""
    size = latents.extra.get("pixel_size")
    h = int(latents.samples.shape[-2])
    if size is not None and int(size[0]) % h == 0:
        return int(size[0]) // h
    return 1 if latents.extra.get("pixel_space") else DEFAULT_VAE_FACTOR


def resized_latents(latents: Latent, cells_w: int, cells_h: int, method: str, crop: str,
                    node_type: str) -> Latent:
    """The latents at cells_w x cells_h cells, seeds and streams kept, pixel size updated."""
    cells_w, cells_h = max(1, cells_w), max(1, cells_h)
    factor = cell_pixels(latents)
    require_pixels(node_type, cells_w * factor, cells_h * factor, latents.batch)
    samples = upscale(latents.samples, cells_w, cells_h, method, crop)
    extra = {**latents.extra, "pixel_size": (cells_h * factor, cells_w * factor)}
    return replace(latents, samples=samples, extra=extra)


def keep_aspect(width: int, height: int, old_w: int, old_h: int) -> tuple[int, int]:
    """Width and height with a 0 side filled in from the other at the old aspect ratio."""
    if width == 0:
        width = max(1, round(old_w * height / old_h))
    elif height == 0:
        height = max(1, round(old_h * width / old_w))
    return width, height


@node("UpscaleLatent", category="latent", output="latents", display_name="Upscale Latents")
def upscale_latent(latents: Latent, width: Size = 1024, height: Size = 1024,
                   method: LatentMethod = "nearest-exact", crop: Crop = "disabled") -> Latent:
    """Resize latents to width x height pixels (0 for one side keeps the aspect ratio, 0
    for both leaves them as they are). Between two Denoise nodes this is a hires fix."""
    require(latents, "UpscaleLatent", "latents")
    if width == 0 and height == 0:
        return latents
    factor = cell_pixels(latents)
    h, w = latents.samples.shape[-2:]
    width, height = keep_aspect(width, height, w * factor, h * factor)
    return resized_latents(latents, width // factor, height // factor, method, crop,
                           "UpscaleLatent")


@node("UpscaleLatentBy", category="latent", output="latents",
      display_name="Upscale Latents By")
def upscale_latent_by(latents: Latent, scale_by: ScaleBy = 2.0,
                      method: LatentMethod = "nearest-exact") -> Latent:
    """Resize latents by a factor (rounded to whole cells)."""
    require(latents, "UpscaleLatentBy", "latents")
    h, w = latents.samples.shape[-2:]
    return resized_latents(latents, round(w * scale_by), round(h * scale_by), method,
                           "disabled", "UpscaleLatentBy")


@node("ResizeImageBy", category="image", output="images", display_name="Resize Image By")
def resize_image_by(images: Image, scale_by: ScaleBy = 2.0,
                    method: ImageMethod = "lanczos") -> Image:
    """Resize images by a factor: torch's modes, or Pillow's Lanczos (8-bit)."""
    _, h, w, _ = images.pixels.shape
    width, height = max(1, round(w * scale_by)), max(1, round(h * scale_by))
    require_pixels("ResizeImageBy", width, height, images.batch)
    x = images.pixels.movedim(-1, 1)
    return Image(upscale(x, width, height, method).movedim(1, -1).contiguous())


UpscaleModelName = Annotated[str, Choice(upscale_model_choices, tooltip=(
    "an ESRGAN-family model in models/upscale_models"))]


@node("LoadUpscaleModel", category="loaders", output="model",
      fingerprint=upscale_model_fingerprint("name"), display_name="Load Upscale Model")
def load_upscale_model_node(name: UpscaleModelName = "") -> UpscaleModel:
    """Load an upscale model (ESRGAN, Real-ESRGAN; with spandrel installed also SwinIR,
    HAT, DAT and the rest of what it reads) from models/upscale_models."""
    return load_upscale_model(name, folders(), "LoadUpscaleModel")


@node("UpscaleImage", category="image", output="images", display_name="Upscale Image")
def upscale_image(model: UpscaleModel, image: Image, tile_size: TileSize = 512,
                  overlap: Overlap = 32) -> Image:
    """Enlarge images with an upscale model, in overlapping tiles so memory stays bounded.
    Tiles are blended in their overlaps; the pixels right at a tile's inner edge (which it
    sees without their neighbours) are left out, so with enough overlap the seams vanish."""
    require(model, "UpscaleImage", "model")
    _, h, w, _ = image.pixels.shape
    require_pixels("UpscaleImage", w * model.scale, h * model.scale, image.batch)
    return upscale_pixels(model, image, tile_size, overlap, SEAM_MARGIN)
