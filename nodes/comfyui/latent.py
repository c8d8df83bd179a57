"""ComfyUI's latent nodes: empty latents, resizing, batches and noise masks.

ComfyUI's LATENT is a dict; ours is `nodes.types.Latent`, whose samples are in the model's
space already (multiplied by the VAE's scaling factor), with ComfyUI's other keys in
`extra`: "batch_index" (which noise a latent cut from a batch keeps) and "noise_mask"
(which cells a sampler may change). Sizes are pixels, at ComfyUI's 8 pixels per latent cell.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from graph_runtime import Choice, Float, Int, node
from nodes.comfyui.upscale import CROPS, LATENT_METHODS, upscale
from nodes.lazy import lazy_module
from nodes.limits import pixel_budget, require_pixels
from nodes.types import Latent, Mask

torch = lazy_module("torch")

MAX_RESOLUTION = 16384
CELL = 8
LATENT_CHANNELS = 4


def _with(latent: Latent, samples: torch.Tensor, **extra: object) -> Latent:
    """The latent with new samples (and extras); its seeds kept while the batch is."""
    merged = {**latent.extra, **extra}
    seeds = latent.seeds if samples.shape[0] == latent.batch else ()
    return replace(latent, samples=samples, seeds=seeds, generator_states=None, extra=merged)


@node("EmptyLatentImage", category="ComfyUI/latent", output="LATENT",
      display_name="Empty Latent Image", check_inputs=pixel_budget(batch="batch_size"))
def empty_latent_image(
    width: Annotated[int, Int(min=16, max=MAX_RESOLUTION, step=8)] = 512,
    height: Annotated[int, Int(min=16, max=MAX_RESOLUTION, step=8)] = 512,
    batch_size: Annotated[int, Int(min=1, max=4096)] = 1,
) -> Latent:
    """A batch of all-zero latents for an image of width x height pixels (the samplers
    give it the model's channel count)."""
    require_pixels("EmptyLatentImage", width, height, batch_size)
    samples = torch.zeros([batch_size, LATENT_CHANNELS, height // CELL, width // CELL])
    return Latent(samples)


def _resize(latent: Latent, width: int, height: int, method: str, crop: str) -> Latent:
    """Resize to width x height cells (at least one each: a tiny latent scaled down)."""
    width, height = max(1, width), max(1, height)
    require_pixels("Upscale Latent", width * CELL, height * CELL, latent.samples.shape[0])
    extra: dict[str, object] = {}
    if "pixel_size" in latent.extra:  # the image size SDXL's size conditioning reads
        old_h, old_w = latent.samples.shape[-2:]
        size_h, size_w = latent.extra["pixel_size"]
        extra["pixel_size"] = (round(size_h * height / old_h), round(size_w * width / old_w))
    return _with(latent, upscale(latent.samples, width, height, method, crop), **extra)


@node("LatentUpscale", category="ComfyUI/latent", output="LATENT",
      display_name="Upscale Latent")
def latent_upscale(
    samples: Latent,
    upscale_method: Annotated[str, Choice(LATENT_METHODS)] = "nearest-exact",
    width: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 512,
    height: Annotated[int, Int(min=0, max=MAX_RESOLUTION, step=8)] = 512,
    crop: Annotated[str, Choice(CROPS)] = "disabled",
) -> Latent:
    """Resize latents to width x height pixels (at least 64); 0 for one side keeps the
    aspect ratio, 0 for both leaves them as they are."""
    if width == 0 and height == 0:
        return samples
    h, w = samples.samples.shape[-2:]
    if width == 0:
        height = max(64, height)
        width = max(64, round(w * height / h))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(h * width / w))
    else:
        width, height = max(64, width), max(64, height)
    return _resize(samples, width // CELL, height // CELL, upscale_method, crop)


@node("LatentUpscaleBy", category="ComfyUI/latent", output="LATENT",
      display_name="Upscale Latent By")
def latent_upscale_by(
    samples: Latent,
    upscale_method: Annotated[str, Choice(LATENT_METHODS)] = "nearest-exact",
    scale_by: Annotated[float, Float(min=0.01, max=8.0, step=0.01)] = 1.5,
) -> Latent:
    """Resize latents by a factor."""
    h, w = samples.samples.shape[-2:]
    return _resize(samples, round(w * scale_by), round(h * scale_by), upscale_method,
                   "disabled")


@node("RepeatLatentBatch", category="ComfyUI/latent/batch", output="LATENT",
      display_name="Repeat Latent Batch")
def repeat_latent_batch(
    samples: Latent,
    amount: Annotated[int, Int(min=1, max=64)] = 1,
) -> Latent:
    """The whole batch `amount` times over; repeated items get batch indices past the
    originals', so each draws its own noise."""
    x = samples.samples
    require_pixels("RepeatLatentBatch", x.shape[-1] * CELL, x.shape[-2] * CELL,
                   x.shape[0] * amount)
    extra: dict[str, object] = {}
    mask = samples.extra.get("noise_mask")
    if isinstance(mask, torch.Tensor) and mask.shape[0] > 1:
        extra["noise_mask"] = mask.repeat((amount,) + (1,) * (mask.ndim - 1))
    index = samples.extra.get("batch_index")
    if index is not None:
        offset = max(index) - min(index) + 1
        extra["batch_index"] = list(index) + [i + k * offset for k in range(1, amount)
                                              for i in index]
    return _with(samples, x.repeat((amount,) + (1,) * (x.ndim - 1)), **extra)


@node("LatentFromBatch", category="ComfyUI/latent/batch", output="LATENT",
      display_name="Latent From Batch")
def latent_from_batch(
    samples: Latent,
    batch_index: Annotated[int, Int(min=0, max=63)] = 0,
    length: Annotated[int, Int(min=1, max=64)] = 1,
) -> Latent:
    """`length` latents of a batch from `batch_index`; they keep their batch indices, so
    they are sampled with the noise they had in the batch."""
    x = samples.samples
    start = min(x.shape[0] - 1, batch_index)
    length = min(x.shape[0] - start, length)
    extra: dict[str, object] = {}
    mask = samples.extra.get("noise_mask")
    if isinstance(mask, torch.Tensor):
        if mask.shape[0] == 1:
            extra["noise_mask"] = mask.clone()
        else:
            if mask.shape[0] < x.shape[0]:
                reps = -(-x.shape[0] // mask.shape[0])
                mask = mask.repeat(reps, *(1,) * (mask.ndim - 1))[: x.shape[0]]
            extra["noise_mask"] = mask[start: start + length].clone()
    index = samples.extra.get("batch_index")
    if index is None:
        extra["batch_index"] = list(range(start, start + length))
    else:
        extra["batch_index"] = list(index)[start: start + length]
    return _with(samples, x[start: start + length].clone(), **extra)


@node("SetLatentNoiseMask", category="ComfyUI/latent/inpaint", output="LATENT",
      display_name="Set Latent Noise Mask")
def set_latent_noise_mask(samples: Latent, mask: Mask) -> Latent:
    """Let samplers change only where the mask is 1 (resized to the latent)."""
    m = mask.mask
    return _with(samples, samples.samples, noise_mask=m.reshape(-1, 1, m.shape[-2], m.shape[-1]))
