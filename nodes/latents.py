"""Starting samples and the diffusers-style VAE encode: noise, sampled encode, pixels to
images. (VAEDecode and ComfyUI's mean-taking VAEEncode are in `nodes.comfyui.vae`.)

Randomness follows the "one generator per image" recipe of diffusers' effective-and-efficient
guide: image i of a batch draws
from its own CPU generator seeded `seed + i`, so any single image can be re-made alone
(batch 1, seed + i) and results do not depend on the device. The generators' states travel
with the Latent, so the next node (Denoise) continues the same streams a single diffusers
pipeline call would use — img2img's VAE sample, its noise and ancestral steps included.
"""

from __future__ import annotations

from typing import Annotated

from graph_runtime import Int, Seed, node
from nodes.generators import generator_states, new_generators
from nodes.lazy import lazy_module
from nodes.limits import pixel_budget, require_pixels
from nodes.previews import fit_projection
from nodes.types import VAE, Image, Latent, UNet, require

torch = lazy_module("torch")
_schedule = lazy_module("nodes.diffusion.schedulers.schedule")

# Widget types the latent nodes share.
LatentSize = Annotated[int, Int(min=0, max=8192, step=8, tooltip="0: the model's native size")]
PixelSize = Annotated[int, Int(min=0, max=8192, tooltip="0: the model's native size")]
BatchSize = Annotated[int, Int(min=1, max=256)]
SeedValue = Annotated[int, Seed()]


def native_size(unet: UNet, factor: int = 1) -> int:
    """The UNet's `sample_size` in pixels (diffusers' default height and width)."""
    size = unet.model.config["sample_size"]
    return int(size[0] if isinstance(size, (list, tuple)) else size) * factor


def _check_size(node_type: str, width: int, height: int, factor: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if value % factor:
            raise ValueError(f"{node_type}: {name} {value} must be a multiple of {factor} "
                             "(the VAE's downsampling factor)")


def seeded_noise(unet: UNet, batch_size: int, height: int, width: int, seed: int,
                 extra: dict[str, object]) -> Latent:
    """Unit Gaussian samples for the UNet's input, image i drawn from a CPU generator seeded
    `seed + i`, on the UNet's device and in its precision."""
    model = unet.model
    seeds = tuple(seed + i for i in range(batch_size))
    gens = new_generators(seeds)
    shape = torch.Size((batch_size, model.in_channels, height, width))
    from nodes.offload import compute_device  # an offloaded UNet's device is its home

    samples = _schedule.randn(shape, gens, compute_device(model), model.dtype)
    return Latent(samples, seeds, generator_states(gens), noise=True, extra=extra)


@node("RandomLatents", category="latent", output="latents", display_name="Random Latents",
      check_inputs=pixel_budget(batch="batch_size"))
def random_latents(
    unet: UNet,
    vae: VAE,
    width: LatentSize = 0,
    height: LatentSize = 0,
    batch_size: BatchSize = 1,
    seed: SeedValue = 0,
) -> Latent:
    """Gaussian latents of shape (batch, unet.in_channels, height/f, width/f), f the VAE's
    downsampling factor; image i uses a CPU generator seeded `seed + i`. A size of 0 is the
    model's native size (512 for SD 1.5)."""
    require(unet, "RandomLatents", "unet")
    require(vae, "RandomLatents", "vae")
    factor = vae.scale_factor
    width, height = width or native_size(unet, factor), height or native_size(unet, factor)
    _check_size("RandomLatents", width, height, factor)
    require_pixels("RandomLatents", width, height, batch_size)
    extra = {"rgb_projection": fit_projection(vae.model, vae.scaling_factor),
             "pixel_size": (height, width)}
    return seeded_noise(unet, batch_size, height // factor, width // factor, seed, extra)


@node("RandomPixelNoise", category="latent", output="latents",
      display_name="Random Pixel Noise", check_inputs=pixel_budget(batch="batch_size"))
def random_pixel_noise(
    unet: UNet,
    width: PixelSize = 0,
    height: PixelSize = 0,
    batch_size: BatchSize = 1,
    seed: SeedValue = 0,
) -> Latent:
    """Pixel-space Gaussian noise for models without a VAE (DDPM), one generator per image
    seeded `seed + i`. A size of 0 is the model's `sample_size`."""
    require(unet, "RandomPixelNoise", "unet")
    width, height = width or native_size(unet), height or native_size(unet)
    require_pixels("RandomPixelNoise", width, height, batch_size)
    return seeded_noise(unet, batch_size, height, width, seed, {"pixel_space": True})


def pixels_to_images(x: torch.Tensor) -> Image:
    """Model-space pixels [B, C, H, W] in -1..1 -> Image [B, H, W, C] in 0..1 (float32)."""
    x = (x / 2 + 0.5).clamp(0, 1)
    return Image(x.cpu().permute(0, 2, 3, 1).float().contiguous())


@node("VAEEncodeSampled", category="latent", output="latents",
      display_name="VAE Encode (Sampled)")
def vae_encode_sampled(vae: VAE, images: Image, seed: SeedValue = 0) -> Latent:
    """Images to latents as diffusers' img2img encodes them: a sample of the VAE's latent
    distribution per image (generator seeded `seed + i`), times the scaling factor. The
    generators continue into Denoise, which draws img2img's noise from them. (VAEEncode
    takes the distribution's mean, as ComfyUI does.)"""
    require(vae, "VAEEncodeSampled", "vae")
    _check_size("VAEEncodeSampled", images.pixels.shape[2], images.pixels.shape[1],
                vae.scale_factor)
    seeds = tuple(seed + i for i in range(images.batch))
    gens = new_generators(seeds)
    with vae.running() as model, torch.no_grad():
        p = next(model.parameters())
        x = images.pixels.permute(0, 3, 1, 2).to(p.device, p.dtype) * 2 - 1
        parts = [model.encode(x[i: i + 1]).sample(gens[i]) for i in range(images.batch)]
    samples = vae.to_latents(torch.cat(parts))
    extra = {"rgb_projection": fit_projection(vae.model, vae.scaling_factor),
             "pixel_size": tuple(images.pixels.shape[1:3])}
    return Latent(samples, seeds, generator_states(gens), noise=False, extra=extra)


@node("ToImage", category="latent", output="images", display_name="To Image")
def to_image(latents: Latent) -> Image:
    """Pixel-space samples (DDPM) in -1..1 to images in 0..1."""
    x = latents.samples
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[1] != 3:
        raise ValueError(f"ToImage: samples have {x.shape[1]} channels, not 3 (RGB) or 1; "
                         "latents of a VAE model need VAEDecode")
    return pixels_to_images(x)
