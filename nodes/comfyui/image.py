"""ComfyUI's image resizing nodes (its LoadImage, SaveImage and PreviewImage are ours,
`nodes.images`, which keep ComfyUI's input names)."""

from __future__ import annotations

from typing import Annotated

from graph_runtime import Choice, Float, Int, node
from nodes.comfyui.upscale import CROPS, IMAGE_METHODS, upscale
from nodes.lazy import lazy_module
from nodes.limits import require_pixels
from nodes.types import Image

torch = lazy_module("torch")

MAX_RESOLUTION = 16384


def _resize(image: Image, width: int, height: int, method: str, crop: str) -> Image:
    """Resize to width x height (at least one pixel each: a tiny image scaled down)."""
    width, height = max(1, width), max(1, height)
    require_pixels("Upscale Image", width, height, image.pixels.shape[0])
    x = image.pixels.movedim(-1, 1)
    return Image(upscale(x, width, height, method, crop).movedim(1, -1).contiguous())


@node("ImageScale", category="ComfyUI/image/upscaling", output="IMAGE",
      display_name="Upscale Image")
def image_scale(
    image: Image,
    upscale_method: Annotated[str, Choice(IMAGE_METHODS)] = "nearest-exact",
    width: Annotated[int, Int(min=0, max=MAX_RESOLUTION)] = 512,
    height: Annotated[int, Int(min=0, max=MAX_RESOLUTION)] = 512,
    crop: Annotated[str, Choice(CROPS)] = "disabled",
) -> Image:
    """Resize images to width x height; 0 for one side keeps the aspect ratio, 0 for both
    leaves them as they are."""
    if width == 0 and height == 0:
        return image
    _, h, w, _ = image.pixels.shape
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    return _resize(image, width, height, upscale_method, crop)


@node("ImageScaleBy", category="ComfyUI/image/upscaling", output="IMAGE",
      display_name="Upscale Image By")
def image_scale_by(
    image: Image,
    upscale_method: Annotated[str, Choice(IMAGE_METHODS)] = "nearest-exact",
    scale_by: Annotated[float, Float(min=0.01, max=8.0, step=0.01)] = 1.0,
) -> Image:
    """Resize images by a factor."""
    _, h, w, _ = image.pixels.shape
    return _resize(image, round(w * scale_by), round(h * scale_by), upscale_method,
                   "disabled")


@node("ImageBatch", category="ComfyUI/image", output="IMAGE", display_name="Batch Images")
def image_batch(image1: Image, image2: Image) -> Image:
    """Two image batches as one; the second is resized (bilinear, centre crop) to the first's
    size when they differ, so any two images can be batched."""
    first, second = image1.pixels, image2.pixels
    if first.shape[1:] != second.shape[1:]:
        second = _resize(image2, first.shape[2], first.shape[1], "bilinear", "center").pixels
    return Image(torch.cat([first, second]))
