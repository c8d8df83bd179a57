"""LoadImage, SaveImage's text chunks and the VAE nodes of the ComfyUI pack."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from nodes.comfyui.loaders import checkpoint_loader_simple
from nodes.comfyui.vae import vae_decode, vae_decode_tiled, vae_encode, vae_encode_tiled
from nodes.images import load_image, png_info
from nodes.types import VAE, Image, Latent


@pytest.fixture(scope="module")
def vae() -> VAE:
    return checkpoint_loader_simple("noodle-tiny").VAE


def smooth_image(h: int, w: int) -> Image:
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    return Image(torch.stack([x, y, (x + y) / 2], dim=-1)[None])


def test_load_image_mask_is_one_minus_alpha(tmp_path: Path) -> None:
    rgba = np.full((6, 5, 4), 255, np.uint8)
    rgba[0, 0, 3] = 0
    rgba[1, 1, 3] = 51
    PILImage.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    loaded = load_image(str(tmp_path / "a.png"))
    assert tuple(loaded.IMAGE.pixels.shape) == (1, 6, 5, 3)
    mask = loaded.MASK.mask
    assert tuple(mask.shape) == (1, 6, 5)
    assert float(mask[0, 0, 0]) == 1.0 and float(mask[0, 1, 1]) == pytest.approx(0.8)
    assert float(mask[0, 2, 2]) == 0.0


def test_load_image_without_alpha_has_an_empty_mask(tmp_path: Path) -> None:
    PILImage.new("RGB", (7, 3), (255, 0, 0)).save(tmp_path / "b.jpg")
    loaded = load_image(str(tmp_path / "b.jpg"))
    assert not loaded.MASK.mask.any() and tuple(loaded.MASK.mask.shape) == (1, 3, 7)
    palette = PILImage.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 1
    palette.save(tmp_path / "p.png", transparency=1)
    assert bool(load_image(str(tmp_path / "p.png")).MASK.mask.eq(1).all())


def test_load_image_reads_animation_frames_as_a_batch(tmp_path: Path) -> None:
    frames = [PILImage.new("RGB", (8, 6), (i * 80, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    loaded = load_image(str(tmp_path / "anim.gif"))
    assert loaded.IMAGE.batch == 3 and loaded.MASK.mask.shape[0] == 3
    reds = loaded.IMAGE.pixels[:, 0, 0, 0]
    assert bool((reds.diff() > 0).all())


def texts(info: PngInfo) -> dict[str, object]:
    """The text chunks an image saved with `info` carries, parsed."""
    buffer = io.BytesIO()
    PILImage.new("RGB", (2, 2)).save(buffer, format="PNG", pnginfo=info)
    with PILImage.open(buffer) as png:
        return {k: json.loads(v) for k, v in png.text.items()}


def test_png_chunks_ours_or_comfyuis() -> None:
    assert texts(png_info(None)) == {}
    ours = {"format": "noodle.workflow", "version": 1, "nodes": {}, "name": "é"}
    assert texts(png_info(ours)) == {"workflow": ours}
    prompt = {"1": {"class_type": "KSampler", "inputs": {}}}
    ui = {"nodes": [], "links": []}
    comfy = {**ours, "comfyui": {"prompt": prompt, "extra_pnginfo": {"workflow": ui,
                                                                      "note": "x"}}}
    assert texts(png_info(comfy)) == {"prompt": prompt, "workflow": ui, "note": "x"}


def test_vae_encode_takes_the_mean_of_a_centred_crop(vae: VAE) -> None:
    img = smooth_image(34, 39)  # the tiny VAE downscales 4x: crop to 32 x 36
    latent = vae_encode(img, vae)
    assert tuple(latent.samples.shape) == (1, 4, 8, 9)
    crop = img.pixels[:, 1:33, 1:37].movedim(-1, 1) * 2 - 1
    with torch.no_grad():
        mean = vae.model.encode(crop).mean * vae.scaling_factor
    torch.testing.assert_close(latent.samples, mean)
    again = vae_encode(img, vae)
    torch.testing.assert_close(again.samples, latent.samples, atol=0, rtol=0)  # no sampling
    decoded = vae_decode(latent, vae)
    assert tuple(decoded.pixels.shape) == (1, 32, 36, 3)
    assert 0.0 <= float(decoded.pixels.min()) and float(decoded.pixels.max()) <= 1.0


def test_tiled_vae_nodes_tile_like_the_vaes_own_tiling(vae: VAE) -> None:
    """64-pixel tiles overlapping by 16 are the tiny VAE's own tiling (its sample size,
    a quarter overlap), which is diffusers' and proven equal to it elsewhere."""
    img = smooth_image(128, 96)
    whole = vae_encode(img, vae)
    torch.testing.assert_close(vae_encode_tiled(img, vae, 512, 64).samples, whole.samples,
                               atol=1e-5, rtol=1e-5)  # one tile: the whole image
    tiling = vae.with_options(tiling=True)
    tiled = vae_encode_tiled(img, vae, 64, 16)
    expected = vae_encode(img, tiling)
    torch.testing.assert_close(tiled.samples, expected.samples, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tiled.samples, whole.samples, atol=1e-3)
    decoded_tiled = vae_decode_tiled(whole, vae, 64, 16)
    torch.testing.assert_close(decoded_tiled.pixels, vae_decode(whole, tiling).pixels,
                               atol=1e-5, rtol=1e-5)
    assert not vae.tiling  # the VAE value passed in is left as it was
    torch.testing.assert_close(vae_decode_tiled(whole, vae, 512, 64).pixels,
                               vae_decode(whole, vae).pixels, atol=1e-5, rtol=1e-5)


def test_latents_of_our_own_nodes_decode_the_same(vae: VAE) -> None:
    samples = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    images = vae_decode(Latent(samples), vae).pixels
    with torch.no_grad():
        expected = (vae.model.decode(samples / vae.scaling_factor) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, expected.movedim(1, -1))
