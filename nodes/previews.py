"""Cheap step previews: a fixed linear map from latent channels to RGB, no VAE call.

When the latents came from a VAE the nodes know (RandomLatents, VAEEncode), the map is a
least-squares fit of that VAE's latents to the colours they encode, made once per model
(`fit_projection`), so previews are right for SD, for the embedded tiny model and for any
channel count. Otherwise 4-channel latents use SD 1.x's published factors (ComfyUI's
"latent2rgb"), pixel-space samples are shown as they are, and any other channel count is
shown in false colour along the sample's own principal directions.
"""

from __future__ import annotations

import weakref

import torch
from PIL import Image as PILImage

SD_LATENT_RGB = torch.tensor([
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.6177],
])
MIN_SIDE = 128


def _principal_rgb(x: torch.Tensor) -> torch.Tensor:
    """[C, H, W] -> [3, H, W] along the sample's own principal directions, scaled to 0..1."""
    c, h, w = x.shape
    flat = x.reshape(c, -1).T  # [HW, C]
    flat = flat - flat.mean(0, keepdim=True)
    if c == 1:
        rgb = flat.repeat(1, 3)
    else:
        _, _, v = torch.linalg.svd(flat, full_matrices=False)
        basis = v[: min(3, c)].T
        rgb = flat @ basis
        if rgb.shape[1] < 3:
            rgb = torch.cat([rgb, rgb[:, :1].expand(-1, 3 - rgb.shape[1])], dim=1)
    lo, hi = rgb.min(0).values, rgb.max(0).values
    rgb = (rgb - lo) / (hi - lo).clamp_min(1e-6)
    return rgb.T.reshape(3, h, w)


def latent_to_rgb(sample: torch.Tensor, projection: torch.Tensor | None = None,
                  pixel_space: bool = False) -> torch.Tensor:
    """One sample [C, H, W] -> RGB [3, H, W] in 0..1."""
    x = sample.detach().float().cpu()
    if pixel_space:
        return (x[:3] / 2 + 0.5).clamp(0, 1)
    if projection is not None and projection.shape[0] == x.shape[0] + 1:
        rgb = torch.einsum("chw,cr->rhw", x, projection[:-1]) + projection[-1, :, None, None]
        return (rgb / 2 + 0.5).clamp(0, 1)
    if x.shape[0] == 4:
        rgb = torch.einsum("chw,cr->rhw", x, SD_LATENT_RGB)
        return ((rgb + 1) / 2).clamp(0, 1)
    return _principal_rgb(x)


_FITTED: weakref.WeakKeyDictionary[torch.nn.Module, torch.Tensor] = weakref.WeakKeyDictionary()


def fit_projection(vae: torch.nn.Module, scaling_factor: float) -> torch.Tensor:
    """Least-squares map `[latent channels, 1] -> RGB in -1..1` for this VAE, fitted on
    flat colour swatches (a 3x3x3 colour grid) pushed through its encoder once per model.
    Works for any latent channel count and any VAE, trained or not."""
    cached = _FITTED.get(vae)
    if cached is not None:
        return cached
    levels = torch.tensor([-1.0, 0.0, 1.0])
    colours = torch.cartesian_prod(levels, levels, levels)  # [27, 3]
    p = next(vae.parameters())
    swatches = colours[:, :, None, None].expand(-1, -1, 32, 32).to(p.device, p.dtype)
    with torch.no_grad():
        means = vae.encode(swatches).mean.float().mean(dim=(2, 3)).cpu() * scaling_factor
    design = torch.cat([means, torch.ones(len(means), 1)], dim=1)
    projection = torch.linalg.lstsq(design, colours).solution  # [C + 1, 3]
    _FITTED[vae] = projection
    return projection


def preview_image(sample: torch.Tensor, projection: torch.Tensor | None = None,
                  pixel_space: bool = False) -> PILImage.Image:
    """A small PIL image of the first sample of a batch, upscaled to be visible."""
    rgb = latent_to_rgb(sample[0], projection, pixel_space)
    arr = (rgb.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    img = PILImage.fromarray(arr)
    side = max(img.size)
    if side < MIN_SIDE:
        factor = -(-MIN_SIDE // side)
        img = img.resize((img.width * factor, img.height * factor), PILImage.NEAREST)
    return img
