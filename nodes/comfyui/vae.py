"""ComfyUI's VAE nodes: decode and encode, whole or in tiles.

Latents here are in the model's space (times the VAE's scaling factor), so decoding divides
by it and encoding multiplies by it; ComfyUI does the same inside its samplers instead.
Encoding takes the mean of the latent distribution (no sampling, so no seed), after
cropping the image to a multiple of the VAE's downscaling factor around its centre, as
ComfyUI does. The tiled variants bound memory by image size: overlapping tiles blended
linearly across the overlap (diffusers' blend; ComfyUI averages several tilings instead,
so tiled results are close to but not the same as ComfyUI's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from graph_runtime import Int, node
from nodes.latents import pixels_to_images
from nodes.lazy import lazy_module
from nodes.types import VAE, Image, Latent, require

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")
_tiling = lazy_module("nodes.diffusion.tiling")

TileSize = Annotated[int, Int(min=64, max=4096, step=32)]
EncodeTileSize = Annotated[int, Int(min=64, max=4096, step=64)]
Overlap = Annotated[int, Int(min=0, max=4096, step=32)]
TemporalSize = Annotated[int, Int(min=8, max=4096, step=4,
                                  tooltip="video VAEs only; unused for images")]
TemporalOverlap = Annotated[int, Int(min=4, max=4096, step=4,
                                     tooltip="video VAEs only; unused for images")]


def _tiles(x: Tensor, fn: Callable[[Tensor], Tensor], tile: int, overlap: int,
           scale: float) -> Tensor:
    """fn over overlapping square tiles of x (`tile` cells, `overlap` shared), each output
    blended into its upper and left neighbours and cropped to its stride. fn changes the
    size by `scale` (8 to decode, 1/8 to encode)."""
    stride = max(tile - overlap, 1)
    return _tiling.stitch(x, fn, tile, stride, int(overlap * scale), int(stride * scale))


def _pixels_in(vae: VAE, pixels: Tensor, model: torch.nn.Module) -> Tensor:
    """Images [B, H, W, C] in 0..1 -> the VAE's input [B, 3, H', W'] in -1..1, cropped to
    a multiple of its downscaling factor around the centre."""
    factor = vae.scale_factor
    x = pixels[..., :3]
    for dim in (1, 2):
        size = x.shape[dim]
        keep = (size // factor) * factor
        if keep != size:
            x = x.narrow(dim, (size % factor) // 2, keep)
    p = next(model.parameters())
    return x.movedim(-1, 1).to(p.device, p.dtype) * 2 - 1


def _decode(node_type: str, vae: VAE, samples: Latent, tile: int = 0, overlap: int = 0
            ) -> Image:
    """Decode, whole or (tile > 0) in tiles of `tile` pixels; our tiles replace the
    module's own tiling option."""
    require(vae, node_type, "vae")
    factor = vae.scale_factor
    with (vae.with_options(tiling=False) if tile else vae).running() as model, torch.no_grad():
        p = next(model.parameters())
        z = vae.from_latents(samples.samples.to(p.device, p.dtype))
        if tile:
            x = _tiles(z, model.decode, tile // factor, overlap // factor, float(factor))
        else:
            x = model.decode(z)
    return pixels_to_images(x)


def _encode(node_type: str, vae: VAE, pixels: Image, tile: int = 0, overlap: int = 0
            ) -> Latent:
    """The latent distribution's mean times the scaling factor, whole or in tiles."""
    require(vae, node_type, "vae")
    with (vae.with_options(tiling=False) if tile else vae).running() as model, torch.no_grad():
        x = _pixels_in(vae, pixels.pixels, model)

        def mean(t: Tensor) -> Tensor:
            return model.encode(t).mean

        z = _tiles(x, mean, tile, overlap, 1 / vae.scale_factor) if tile else mean(x)
    return Latent(vae.to_latents(z.float()), noise=False)


@node("VAEDecode", category="ComfyUI/latent", output="IMAGE", display_name="VAE Decode")
def vae_decode(samples: Latent, vae: VAE) -> Image:
    """Latents to images: undo the VAE's scaling (and its latent mean and std where its
    config has them), decode, map -1..1 to 0..1."""
    return _decode("VAEDecode", vae, samples)


@node("VAEEncode", category="ComfyUI/latent", output="LATENT", display_name="VAE Encode")
def vae_encode(pixels: Image, vae: VAE) -> Latent:
    """Images to latents: the mean of the VAE's latent distribution, times the scaling
    factor (for a sampled latent with a seed, as diffusers encodes, see VAEEncodeSampled)."""
    return _encode("VAEEncode", vae, pixels)


def _tile_overlap(tile_size: int, overlap: int) -> int:
    """At most a quarter of the tile overlaps (ComfyUI's rule)."""
    return tile_size // 4 if tile_size < overlap * 4 else overlap


@node("VAEDecodeTiled", category="ComfyUI/_for_testing", output="IMAGE",
      display_name="VAE Decode (Tiled)")
def vae_decode_tiled(samples: Latent, vae: VAE, tile_size: TileSize = 512,
                     overlap: Overlap = 64, temporal_size: TemporalSize = 64,
                     temporal_overlap: TemporalOverlap = 8) -> Image:
    """Decode in overlapping tiles of `tile_size` pixels, for images too large to decode
    at once."""
    return _decode("VAEDecodeTiled", vae, samples, tile_size,
                   _tile_overlap(tile_size, overlap))


@node("VAEEncodeTiled", category="ComfyUI/_for_testing", output="LATENT",
      display_name="VAE Encode (Tiled)")
def vae_encode_tiled(pixels: Image, vae: VAE, tile_size: EncodeTileSize = 512,
                     overlap: Overlap = 64, temporal_size: TemporalSize = 64,
                     temporal_overlap: TemporalOverlap = 8) -> Latent:
    """Encode in overlapping tiles of `tile_size` pixels (the distribution's mean)."""
    return _encode("VAEEncodeTiled", vae, pixels, tile_size,
                   _tile_overlap(tile_size, overlap))
