"""Inpainting and outpainting: what Denoise needs to repaint part of an image, the canvas
padding of outpainting, and pasting the result back into the original.

Denoise inpaints the way diffusers' `StableDiffusionInpaintPipeline` does:
- an ordinary (4-channel) UNet denoises everywhere, and after every step the kept region
  is replaced by the original latents noised to the next timestep (the same noise as the
  start), so only the masked region changes; the last step blends in the clean latents;
- an inpainting UNet (9 channels) sees, next to the latents, the mask and the latents of
  the image with the masked region greyed out, and needs no blending.

`InpaintInputs` makes the LATENT carrying all of it (`extra["inpaint"]`). It stores the
VAE's latent distributions, not samples: diffusers draws the image's sample, the starting
noise and the masked image's sample from each image's generator in that order (the image's
only when the run needs it), so Denoise draws them when it knows the UNet and the strength.
A latent with only ComfyUI's `noise_mask` (SetLatentNoiseMask) is blended the same way,
its samples being the original latents and its soft mask kept as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from graph_runtime import Int, Seed, node
from nodes.lazy import lazy_module
from nodes.previews import fit_projection
from nodes.types import VAE, Image, Latent, Mask, require

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")
_schedule = lazy_module("nodes.diffusion.schedulers.schedule")

INPAINT = "inpaint"  # the key of `Latent.extra` InpaintInputs fills
NOISE_MASK = "noise_mask"  # ComfyUI's key: which cells a sampler may change
UNET_INPAINT_CHANNELS = 9  # latents + mask + masked-image latents


# ----------------------------------------------------------------------------- masks
def mask_batch(mask: Tensor, height: int, width: int, batch: int) -> Tensor:
    """A mask `[B, H', W']` as `[batch, 1, height, width]`: resized bilinearly when its
    size differs from the image's, a single mask repeated over the batch."""
    m = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    if tuple(m.shape[-2:]) != (height, width):
        m = F.interpolate(m, size=(height, width), mode="bilinear")
    if m.shape[0] == batch:
        return m
    if m.shape[0] == 1 or batch % m.shape[0] == 0:
        return m.repeat(batch // m.shape[0], 1, 1, 1)
    raise ValueError(f"{m.shape[0]} masks cannot be paired with {batch} images")


def grow(mask: Tensor, by: int) -> Tensor:
    """A binary mask `[B, 1, H, W]` grown over a `by` x `by` window (ComfyUI's
    `grow_mask_by`: a few more cells repainted hide the seam)."""
    if by <= 1:
        return mask
    height, width = mask.shape[-2:]
    grown = F.max_pool2d(mask, by, stride=1, padding=math.ceil((by - 1) / 2))
    return grown[..., :height, :width]


def binarize(mask: Tensor) -> Tensor:
    """diffusers' mask processing: 1 from 0.5 up, 0 below."""
    return (mask >= 0.5).to(mask.dtype)


# ------------------------------------------------------------------ what Denoise takes
@dataclass(frozen=True, eq=False)
class InpaintLatents:
    """The image's and the masked image's latent distributions (mean and standard
    deviation, already in the UNet's latent space) and the mask at latent size `[B, 1,
    h, w]` (1 = repaint)."""

    image_mean: Tensor
    image_std: Tensor
    masked_mean: Tensor
    masked_std: Tensor
    mask: Tensor


def _draw(mean: Tensor, std: Tensor, gens: list[torch.Generator]) -> Tensor:
    """A sample of a VAE distribution from the images' generators (as the VAE draws)."""
    return mean + std * _schedule.randn(mean.shape, gens, mean.device, mean.dtype)


def _fit(t: Tensor, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A tensor of one image (or of the run's batch) on the run's device, one per image."""
    if t.shape[0] != batch:
        t = t.repeat_interleave(batch // t.shape[0], dim=0)
    return t.to(device, dtype)


class Inpainting:
    """One inpainting run of Denoise: the starting sample, the UNet's extra input channels
    (9-channel UNets) and the blending of the kept region after each step (4-channel)."""

    def __init__(self, latents: Latent, model: Any) -> None:
        self.source: InpaintLatents | None = latents.extra.get(INPAINT)
        self.latents = latents
        self.concat = int(getattr(model, "in_channels", 4)) == UNET_INPAINT_CHANNELS
        if self.concat and self.source is None:
            raise ValueError("Denoise: this is an inpainting UNet (9 input channels); link "
                             "latents from InpaintInputs (an image and its mask)")
        self.noise: Tensor | None = None
        self.image: Tensor | None = None
        self.mask: Tensor | None = None
        self.masked: Tensor | None = None

    def start(self, sched: Any, gens: list[torch.Generator], steps: int, strength: float,
              device: torch.device, dtype: torch.dtype, timesteps_for: Any
              ) -> tuple[Tensor, Tensor, int]:
        """The first sample, the timesteps and their step count, drawing from the
        generators in diffusers' order: the image's sample (when blending or noising it),
        the noise, the masked image's sample."""
        timesteps, n_steps = timesteps_for(sched, steps, strength)
        full = strength == 1.0
        src, batch = self.source, self.latents.batch
        if src is None:
            self.image = self.latents.samples.to(device, dtype)
        elif not self.concat or not full:
            self.image = _draw(_fit(src.image_mean, batch, device, dtype),
                               _fit(src.image_std, batch, device, dtype), gens)
        shape = (batch, *self.latents.samples.shape[1:])
        self.noise = _schedule.randn(torch.Size(shape), gens, device, dtype)
        if full:
            x = self.noise * sched.init_noise_sigma
        else:
            x = sched.add_noise(self.image, self.noise, timesteps[:1].repeat(batch))
        if src is None:
            mask = self.latents.extra[NOISE_MASK]
            self.mask = mask_batch(mask.to(device), *x.shape[-2:], batch).to(dtype)
        else:
            self.masked = _draw(_fit(src.masked_mean, batch, device, dtype),
                                _fit(src.masked_std, batch, device, dtype), gens)
            self.mask = _fit(src.mask, batch, device, dtype)
        return x, timesteps, n_steps

    def unet_input(self, model_in: Tensor) -> Tensor:
        """A 9-channel UNet's input: the scaled latents, the mask, the masked image's
        latents (repeated for each half of classifier-free guidance)."""
        if not self.concat or self.mask is None or self.masked is None:
            return model_in
        times = model_in.shape[0] // self.mask.shape[0]
        return torch.cat([model_in, torch.cat([self.mask] * times),
                          torch.cat([self.masked] * times)], dim=1)

    def blend(self, sched: Any, x: Tensor, i: int, timesteps: Tensor) -> Tensor:
        """A 4-channel UNet's step result with the kept region replaced by the original
        latents noised to the next timestep (clean after the last step)."""
        if self.concat or self.image is None or self.mask is None or self.noise is None:
            return x
        kept = self.image
        if i < len(timesteps) - 1:
            kept = sched.add_noise(kept, self.noise, timesteps[i + 1: i + 2])
        return (1 - self.mask) * kept + self.mask * x


def inpainting(latents: Latent, model: Any, denoising_start: float,
               denoising_end: float) -> Inpainting | None:
    """The inpainting run a Denoise's latents ask for (InpaintInputs, or a noise mask), or
    None for plain denoising."""
    extra = latents.extra
    wanted = INPAINT in extra or NOISE_MASK in extra
    if not wanted and int(getattr(model, "in_channels", 4)) != UNET_INPAINT_CHANNELS:
        return None
    if wanted and (0.0 < denoising_start < 1.0 or 0.0 < denoising_end < 1.0):
        raise ValueError("Denoise: inpainting runs the whole schedule; leave "
                         "denoising_start at 0 and denoising_end at 1")
    return Inpainting(latents, model)


def finished_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """The extras a Denoise result keeps: not the inpainting recipe it used up (the noise
    mask stays, as ComfyUI's samplers keep it)."""
    return {k: v for k, v in extra.items() if k != INPAINT}


# ------------------------------------------------------------------------------ nodes
def _encode(model: torch.nn.Module, vae: VAE, x: Tensor) -> tuple[Tensor, Tensor]:
    """The latent distribution of each image (mean, std) in the UNet's latent space."""
    means, stds = [], []
    for i in range(x.shape[0]):
        dist = model.encode(x[i: i + 1])
        means.append(dist.mean)
        stds.append(dist.std)
    mean, std = torch.cat(means), torch.cat(stds)
    return vae.to_latents(mean), vae.to_latents(std) - vae.to_latents(torch.zeros_like(std))


@node("InpaintInputs", category="latent/inpaint", output="latents",
      display_name="Inpaint Inputs")
def inpaint_inputs(
    vae: VAE,
    image: Image,
    mask: Mask,
    grow_mask_by: Annotated[int, Int(min=0, max=64, tooltip=(
        "grow the repainted region over this window of pixels (hides seams)"))] = 6,
    seed: Annotated[int, Seed()] = 0,
) -> Latent:
    """Latents to inpaint with Denoise: the image's latents plus its mask (1 = repaint,
    from 0.5 up) and the latents of the image greyed where masked, as diffusers'
    inpainting pipeline prepares them. Image i draws from a generator seeded `seed + i`.
    The samples are the image's mean latents, and the grown mask is also ComfyUI's noise
    mask, so the pack's samplers inpaint these latents too."""
    require(vae, "InpaintInputs", "vae")
    batch, height, width, _ = image.pixels.shape
    factor = vae.scale_factor
    if height % factor or width % factor:
        raise ValueError(f"InpaintInputs: the image is {width}x{height}; both sides must be "
                         f"multiples of {factor} (the VAE's downsampling factor)")
    try:
        pixel_mask = binarize(mask_batch(mask.mask, height, width, batch))
    except ValueError as exc:
        raise ValueError(f"InpaintInputs: {exc}") from None
    grown = grow(pixel_mask, grow_mask_by)
    with vae.running() as model, torch.no_grad():
        p = next(model.parameters())
        x = image.pixels[..., :3].permute(0, 3, 1, 2).to(p.device, p.dtype) * 2 - 1
        image_mean, image_std = _encode(model, vae, x)
        keep = (pixel_mask < 0.5).to(p.device, p.dtype)
        masked_mean, masked_std = _encode(model, vae, x * keep)
    latent_mask = F.interpolate(grown, size=(height // factor, width // factor))
    source = InpaintLatents(image_mean, image_std, masked_mean, masked_std,
                            latent_mask.to(image_mean.device, image_mean.dtype))
    extra = {"rgb_projection": fit_projection(vae.model, vae.scaling_factor),
             "pixel_size": (height, width), INPAINT: source, NOISE_MASK: grown}
    return Latent(image_mean, tuple(seed + i for i in range(batch)), None, noise=False,
                  extra=extra)


class Padded(NamedTuple):
    images: Image
    mask: Mask


def feather(height: int, width: int, sides: tuple[int, int, int, int],
            feathering: int) -> Tensor:
    """The mask over the original image inside an outpainting canvas: 0, rising as
    ((f - d) / f)^2 within `feathering` pixels of each padded side (d: the distance to that
    side), so the new content fades into the old (ComfyUI's ImagePadForOutpaint)."""
    inside = torch.zeros(height, width)
    if feathering <= 0 or 2 * feathering >= height or 2 * feathering >= width:
        return inside
    left, top, right, bottom = sides
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    far_rows, far_cols = torch.full_like(rows, height), torch.full_like(cols, width)
    distance = torch.stack([rows if top else far_rows, height - rows if bottom else far_rows,
                            cols if left else far_cols, width - cols if right else far_cols
                            ]).amin(dim=0)
    ramp = ((feathering - distance) / feathering).square()
    return torch.where(distance < feathering, ramp, inside)


PadSide = Annotated[int, Int(min=0, max=8192, step=8)]


@node("PadImage", category="image", display_name="Pad Image for Outpainting")
def pad_image(
    images: Image,
    left: PadSide = 0,
    top: PadSide = 0,
    right: PadSide = 0,
    bottom: PadSide = 0,
    feathering: Annotated[int, Int(min=0, max=8192, tooltip=(
        "pixels over which the old image fades into the new"))] = 40,
) -> Padded:
    """Grow the canvas for outpainting: the image on mid grey, and a mask that is 1 over
    the new border and 0 over the image (feathered towards the padded sides)."""
    batch, height, width, channels = images.pixels.shape
    canvas = torch.full((batch, top + height + bottom, left + width + right, channels), 0.5)
    canvas[:, top: top + height, left: left + width] = images.pixels
    mask = torch.ones(top + height + bottom, left + width + right)
    mask[top: top + height, left: left + width] = feather(
        height, width, (left, top, right, bottom), feathering)
    return Padded(Image(canvas), Mask(mask[None]))


@node("PasteMasked", category="image", output="images", display_name="Paste Masked")
def paste_masked(original: Image, generated: Image, mask: Mask) -> Image:
    """The generated images inside the mask, the original ones outside (blended where the
    mask is soft), so everything the mask keeps is exactly the original."""
    if original.pixels.shape[1:3] != generated.pixels.shape[1:3]:
        raise ValueError(f"PasteMasked: the generated images are "
                         f"{tuple(generated.pixels.shape[1:3])} (height, width), the "
                         f"originals {tuple(original.pixels.shape[1:3])}")
    batch = max(original.batch, generated.batch)
    _, height, width, _ = generated.pixels.shape
    try:
        m = mask_batch(mask.mask, height, width, batch).permute(0, 2, 3, 1).clamp(0, 1)
    except ValueError as exc:
        raise ValueError(f"PasteMasked: {exc}") from None
    first, second = original.pixels, generated.pixels
    if first.shape[0] != batch:
        first = first.repeat(batch // first.shape[0], 1, 1, 1)
    if second.shape[0] != batch:
        second = second.repeat(batch // second.shape[0], 1, 1, 1)
    channels = min(first.shape[-1], second.shape[-1])
    return Image((first[..., :channels] * (1 - m) + second[..., :channels] * m).contiguous())
