"""Cheap step previews: a fixed linear map from latent channels to RGB, no VAE call.

When the latents came from a VAE the nodes know (RandomLatents, VAEEncodeSampled), the map
is a least-squares fit of that VAE's latents to the colours they encode, made once per model
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


def _fit_scenes(n: int = 24, side: int = 64) -> torch.Tensor:
    """A 3x3x3 grid of flat colour swatches plus seeded scenes of coloured rectangles on a
    flat background, in -1..1.

    Edges and several colours per image matter: a VAE's latents for a uniform swatch are
    not what it produces next to edges, so a fit on swatch means can be far off on real
    images, while a per-pixel fit on such scenes tracks them closely."""
    g = torch.Generator().manual_seed(0)
    levels = torch.tensor([-1.0, 0.0, 1.0])
    swatches = torch.cartesian_prod(levels, levels, levels)[:, :, None, None]
    scenes = torch.empty(n, 3, side, side)
    for k in range(n):
        scenes[k] = (torch.rand(3, generator=g) * 2 - 1)[:, None, None]
        for _ in range(3):
            colour = torch.rand(3, generator=g) * 2 - 1
            x0, y0 = torch.randint(0, side * 3 // 4, (2,), generator=g).tolist()
            w, h = torch.randint(side // 8, side // 2, (2,), generator=g).tolist()
            scenes[k, :, y0:y0 + h, x0:x0 + w] = colour[:, None, None]
    return torch.cat([swatches.expand(-1, -1, side, side), scenes])


def fit_projection(vae: torch.nn.Module, scaling_factor: float) -> torch.Tensor:
    """Least-squares map `[latent channels, 1] -> RGB in -1..1` for this VAE, fitted per
    latent pixel against the area-downscaled colours of a few seeded scenes pushed through
    its encoder, once per model. Works for any latent channel count and any VAE."""
    cached = _FITTED.get(vae)
    if cached is not None:
        return cached
    p = next(vae.parameters())
    scenes = _fit_scenes()
    with torch.no_grad():
        z = vae.encode(scenes.to(p.device, p.dtype)).mean.float().cpu() * scaling_factor
    target = torch.nn.functional.interpolate(scenes, size=z.shape[-2:], mode="area")
    latents = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    design = torch.cat([latents, torch.ones(len(latents), 1)], dim=1)
    colours = target.permute(0, 2, 3, 1).reshape(-1, 3)
    projection = torch.linalg.lstsq(design, colours).solution  # [C + 1, 3]
    _FITTED[vae] = projection
    return projection


def step_preview(sample: torch.Tensor, projection: torch.Tensor | None = None,
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
