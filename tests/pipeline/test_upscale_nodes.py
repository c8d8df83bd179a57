"""Latent and image resizing nodes: every latent mode against torch's interpolate (bislerp
against a per-cell implementation written here), seeds, random streams and pixel size
carried along, centre crop, Lanczos against Pillow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from nodes.generators import generator_states, new_generators
from nodes.types import Image, Latent
from nodes.upscale import resize_image_by, upscale_latent, upscale_latent_by


def make_latent(h: int = 6, w: int = 10, factor: int = 8) -> Latent:
    torch.manual_seed(0)
    gens = new_generators((5, 6))
    for g in gens:
        torch.randn(3, generator=g)  # streams part-way through, as after a Denoise
    return Latent(torch.randn(2, 4, h, w), (5, 6), generator_states(gens), noise=False,
                  extra={"pixel_size": (h * factor, w * factor), "rgb_projection": "kept"})


@pytest.mark.parametrize("mode", ["nearest-exact", "bilinear", "area", "bicubic"])
def test_latent_modes_equal_interpolate(mode: str) -> None:
    lat = make_latent()
    out = upscale_latent(lat, width=160, height=96, method=mode, crop="disabled")
    ref = F.interpolate(lat.samples, size=(12, 20), mode=mode)
    assert out.samples.shape == (2, 4, 12, 20)
    assert torch.equal(out.samples, ref)
    by = upscale_latent_by(lat, scale_by=1.5, method=mode)
    assert torch.equal(by.samples, F.interpolate(lat.samples, size=(9, 15), mode=mode))


def test_seeds_streams_and_pixel_size_follow() -> None:
    lat = make_latent()
    out = upscale_latent_by(lat, scale_by=2.0, method="bilinear")
    assert out.seeds == lat.seeds and out.generator_states is lat.generator_states
    assert out.extra["pixel_size"] == (96, 160) and out.extra["rgb_projection"] == "kept"
    # The continued streams draw what the originals would draw next.
    a, b = out.generators()[1], lat.generators()[1]
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))
    assert lat.extra["pixel_size"] == (48, 80)  # the input is left alone


def test_zero_side_keeps_aspect_and_pixel_space_factor() -> None:
    lat = make_latent()
    out = upscale_latent(lat, width=0, height=192, method="nearest-exact", crop="disabled")
    assert out.samples.shape[-2:] == (24, 40) and out.extra["pixel_size"] == (192, 320)
    assert upscale_latent(lat, width=0, height=0, method="bilinear", crop="disabled") is lat
    pixels = Latent(torch.rand(1, 3, 16, 16), (0,), extra={"pixel_space": True})
    out = upscale_latent(pixels, width=32, height=24, method="bilinear", crop="disabled")
    assert out.samples.shape[-2:] == (24, 32) and out.extra["pixel_size"] == (24, 32)


def test_center_crop_cuts_to_the_new_aspect_first() -> None:
    lat = make_latent(h=8, w=16)
    out = upscale_latent(lat, width=128, height=128, method="nearest-exact", crop="center")
    ref = F.interpolate(lat.samples[..., :, 4:12], size=(16, 16), mode="nearest-exact")
    assert torch.equal(out.samples, ref)


def slerp_cell(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """One cell: the direction slerped, the length interpolated linearly; equal or
    opposite directions as ComfyUI treats them (first cell, plain lerp)."""
    na, nb = float(a.norm()), float(b.norm())
    ua = a / na if na else torch.zeros_like(a)
    ub = b / nb if nb else torch.zeros_like(b)
    dot = float((ua * ub).sum())
    if dot > 1 - 1e-5:
        return a.clone()
    if dot < 1e-5 - 1:
        return a * (1 - t) + b * t
    omega = math.acos(max(-1.0, min(1.0, dot)))
    so = math.sin(omega)
    d = (math.sin((1 - t) * omega) / so) * ua + (math.sin(t * omega) / so) * ub
    return d * (na * (1 - t) + nb * t)


def source(i: int, old: int, new: int) -> tuple[int, int, float]:
    """Half-pixel-centred source position, clamped as bilinear interpolation does."""
    pos = min(max((i + 0.5) * old / new - 0.5, 0.0), old - 1)
    lo = int(math.floor(pos))
    return lo, min(lo + 1, old - 1), pos - lo


def bislerp_reference(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    n, c, h, w = x.shape
    rows = torch.empty(n, c, h, width)
    for j in range(width):
        lo, hi, t = source(j, w, width)
        for b in range(n):
            for y in range(h):
                rows[b, :, y, j] = slerp_cell(x[b, :, y, lo], x[b, :, y, hi], t)
    out = torch.empty(n, c, height, width)
    for i in range(height):
        lo, hi, t = source(i, h, height)
        for b in range(n):
            for xx in range(width):
                out[b, :, i, xx] = slerp_cell(rows[b, :, lo, xx], rows[b, :, hi, xx], t)
    return out


@pytest.mark.parametrize("size", [(11, 7), (4, 3)], ids=["up", "down"])
def test_bislerp_equals_per_cell_reference(size: tuple[int, int]) -> None:
    lat = make_latent(h=5, w=6)
    width, height = size
    out = upscale_latent(lat, width=width * 8, height=height * 8, method="bislerp",
                         crop="disabled")
    ref = bislerp_reference(lat.samples, width, height)
    assert out.samples.shape == ref.shape
    assert float((out.samples - ref).abs().max()) < 1e-4
    # Not plain bilinear: slerping keeps the cells' lengths.
    bilinear = F.interpolate(lat.samples, size=(height, width), mode="bilinear")
    assert float((ref - bilinear).abs().max()) > 1e-2


def test_resize_image_by_lanczos_equals_pillow() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (1, 10, 14, 3), dtype=np.uint8)
    images = Image(torch.from_numpy(arr).float() / 255)
    out = resize_image_by(images, scale_by=2.5, method="lanczos")
    ref = np.asarray(PILImage.fromarray(arr[0]).resize((35, 25), PILImage.Resampling.LANCZOS),
                     dtype=np.float32) / 255
    assert out.pixels.shape == (1, 25, 35, 3)
    assert float(np.abs(out.pixels[0].numpy() - ref).max()) < 1e-6
    bicubic = resize_image_by(images, scale_by=2.0, method="bicubic")
    ref2 = F.interpolate(images.pixels.movedim(-1, 1), size=(20, 28), mode="bicubic")
    assert torch.equal(bicubic.pixels, ref2.movedim(1, -1))
