"""ComfyUI's inpainting and outpainting nodes: VAEEncodeForInpaint and ImagePadForOutpaint
(its SetLatentNoiseMask is with the latent nodes, `nodes.comfyui.latent`).

VAEEncodeForInpaint follows ComfyUI's rules, which differ a little from our InpaintInputs:
the mask is rounded (0.5 rounds down), the image is cropped to a multiple of the VAE's
factor around its centre, the masked pixels are greyed before encoding the mean, and the
result's noise mask is the grown mask at pixel size, which the samplers resize.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

from graph_runtime import Int, node
from nodes.comfyui.vae import _encode
from nodes.inpaint import NOISE_MASK, grow, pad_image
from nodes.lazy import lazy_module
from nodes.types import VAE, Image, Latent, Mask, require

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")


@node("VAEEncodeForInpaint", category="ComfyUI/latent/inpaint", output="LATENT",
      display_name="VAE Encode (for Inpainting)")
def vae_encode_for_inpaint(
    pixels: Image,
    vae: VAE,
    mask: Mask,
    grow_mask_by: Annotated[int, Int(min=0, max=64)] = 6,
) -> Latent:
    """Encode the image with the masked region grey, and let samplers repaint only the
    mask, grown by `grow_mask_by` pixels to hide the seam."""
    require(vae, "VAEEncodeForInpaint", "vae")
    factor = vae.scale_factor
    _, height, width, _ = pixels.pixels.shape
    keep_h, keep_w = height // factor * factor, width // factor * factor
    m = mask.mask.float().reshape(-1, 1, mask.mask.shape[-2], mask.mask.shape[-1])
    m = F.interpolate(m, size=(height, width), mode="bilinear")
    top, left = (height % factor) // 2, (width % factor) // 2
    x = pixels.pixels[:, top: top + keep_h, left: left + keep_w].clone()
    m = m[:, :, top: top + keep_h, left: left + keep_w]
    rounded = torch.round(m)
    keep = (1.0 - rounded).squeeze(1)[..., None]
    x[..., :3] = (x[..., :3] - 0.5) * keep + 0.5
    encoded = _encode("VAEEncodeForInpaint", vae, Image(x))
    noise_mask = grow(rounded, grow_mask_by).round()
    return Latent(encoded.samples, noise=False, extra={NOISE_MASK: noise_mask})


Side = Annotated[int, Int(min=0, max=16384, step=8)]


class Outpaint(NamedTuple):
    IMAGE: Image
    MASK: Mask


@node("ImagePadForOutpaint", category="ComfyUI/image", display_name="Pad Image for Outpainting")
def image_pad_for_outpaint(
    image: Image,
    left: Side = 0,
    top: Side = 0,
    right: Side = 0,
    bottom: Side = 0,
    feathering: Annotated[int, Int(min=0, max=16384)] = 40,
) -> Outpaint:
    """A grey border around the image for outpainting, and the mask of what to paint (the
    border, fading into the image over `feathering` pixels)."""
    padded = pad_image(image, left, top, right, bottom, feathering)
    return Outpaint(padded.images, padded.mask)

