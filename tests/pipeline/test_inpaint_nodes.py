"""The outpainting and paste-back nodes, and the ComfyUI pack's inpainting nodes, against
ComfyUI's maths written out here (loops, as its nodes are described), and a noise mask
(SetLatentNoiseMask) honoured by Denoise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from torch.nn import functional as F

from graph_runtime.executor import Executor
from nodes.comfyui.inpaint import image_pad_for_outpaint, vae_encode_for_inpaint
from nodes.comfyui.vae import vae_encode
from nodes.inpaint import grow, pad_image, paste_masked
from nodes.types import VAE, Image, Mask
from tests.support.model_configs import IMAGE_SIZE
from tests.support.tiny_models import TinyModel
from tests.support.workflows import link, run, wf


def comfy_pad(image: torch.Tensor, left: int, top: int, right: int, bottom: int,
              feathering: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ImagePadForOutpaint as ComfyUI computes it, pixel by pixel."""
    b, h, w, c = image.shape
    out = torch.full((b, h + top + bottom, w + left + right, c), 0.5)
    out[:, top:top + h, left:left + w] = image
    mask = torch.ones(h + top + bottom, w + left + right)
    inner = torch.zeros(h, w)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        for i in range(h):
            for j in range(w):
                d = min(i if top else h, h - i if bottom else h,
                        j if left else w, w - j if right else w)
                if d < feathering:
                    inner[i, j] = ((feathering - d) / feathering) ** 2
    mask[top:top + h, left:left + w] = inner
    return out, mask[None]


@pytest.mark.parametrize("sides,feathering", [
    ((16, 0, 8, 24), 10), ((0, 8, 0, 0), 6), ((8, 8, 8, 8), 40), ((0, 0, 0, 0), 5),
    ((24, 16, 0, 0), 0)])
def test_pad_image_matches_comfyui(sides: tuple[int, int, int, int], feathering: int) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 30, 40, 3, generator=g)
    ours = pad_image(Image(image), *sides, feathering)
    pack = image_pad_for_outpaint(Image(image), *sides, feathering)
    ref_image, ref_mask = comfy_pad(image, *sides, feathering)
    assert torch.equal(ours.images.pixels, ref_image)
    assert torch.allclose(ours.mask.mask, ref_mask, atol=1e-6)
    assert torch.equal(pack.IMAGE.pixels, ref_image) and torch.equal(pack.MASK.mask,
                                                                       ours.mask.mask)
    if 0 < 2 * feathering < 30 and any(sides):
        inner = ours.mask.mask[0, sides[1]:sides[1] + 30, sides[0]:sides[0] + 40]
        assert bool(((inner > 0) & (inner < 1)).any())


@pytest.mark.parametrize("by", [0, 1, 2, 5, 6])
def test_grow_matches_comfyui_kernel(by: int) -> None:
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(2, 1, 21, 17, generator=g) > 0.9).float()
    if by == 0:
        expected = mask
    else:
        padding = -(-(by - 1) // 2)
        conv = F.conv2d(mask, torch.ones(1, 1, by, by), padding=padding)
        expected = conv.clamp(0, 1)[..., :21, :17]
    assert torch.equal(grow(mask, by), expected)
    assert by < 2 or grow(mask, by).sum() > mask.sum()


def test_paste_masked_keeps_the_original_outside() -> None:
    g = torch.Generator().manual_seed(2)
    original, generated = torch.rand(1, 16, 24, 3, generator=g), torch.rand(2, 16, 24, 3,
                                                                           generator=g)
    mask = torch.zeros(1, 16, 24)
    mask[0, 4:10, 6:20] = 1.0
    mask[0, 10, 6:20] = 0.25
    out = paste_masked(Image(original), Image(generated), Mask(mask)).pixels
    expected = original * (1 - mask[..., None]) + generated * mask[..., None]
    assert out.shape == (2, 16, 24, 3)
    assert torch.allclose(out, expected)
    assert torch.equal(out[:, :4], original[:, :4].expand(2, -1, -1, -1))
    assert torch.equal(out[:, 5, 7], generated[:, 5, 7])
    with pytest.raises(ValueError, match="PasteMasked"):
        paste_masked(Image(original), Image(generated[:, :8]), Mask(mask))


def test_vae_encode_for_inpaint_matches_comfyui(tiny_sd: TinyModel) -> None:
    """The greyed image's mean latents and the grown, rounded pixel mask; an image that is
    not a multiple of the VAE's factor is cropped around its centre (mask too)."""
    from nodes.loaders import load_pipeline

    vae: VAE = load_pipeline(str(tiny_sd.folder)).vae
    g = torch.Generator().manual_seed(3)
    pixels = torch.rand(1, IMAGE_SIZE + 1, IMAGE_SIZE + 3, 3, generator=g)
    mask = torch.zeros(1, IMAGE_SIZE + 1, IMAGE_SIZE + 3)
    mask[0, 10:20, 5:15] = 0.7
    mask[0, 3, 3] = 0.5  # rounds down, as torch.round does
    out = vae_encode_for_inpaint(Image(pixels), vae, Mask(mask), grow_mask_by=6)
    # ComfyUI's steps: crop to a multiple of 2 from (size % 2) // 2 (here 0), grey where
    # round(mask) is 1.
    cropped = pixels[:, :IMAGE_SIZE, :IMAGE_SIZE + 2].clone()
    m = mask[:, :IMAGE_SIZE, :IMAGE_SIZE + 2].round()
    cropped = (cropped - 0.5) * (1 - m[..., None]) + 0.5
    expected = vae_encode(Image(cropped), vae).samples
    assert torch.allclose(out.samples, expected, atol=1e-6)
    kernel = torch.ones(1, 1, 6, 6)
    grown = F.conv2d(m[:, None], kernel, padding=3).clamp(0, 1)[..., :IMAGE_SIZE, :IMAGE_SIZE + 2]
    assert torch.equal(out.extra["noise_mask"], grown.round())
    assert float(out.extra["noise_mask"][0, 0, 3, 2]) == 0.0


def test_denoise_honours_a_noise_mask(tiny_sd: TinyModel, executor: Executor,
                                      tmp_path: Path) -> None:
    """SetLatentNoiseMask on sampled latents: Denoise changes only the masked cells (the
    last step blends the clean latents back where the mask is 0)."""
    rgba = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[8:24, 8:24, 3] = 0  # transparent: the mask is 1 there
    picture = tmp_path / "masked.png"
    PILImage.fromarray(rgba, "RGBA").save(picture)
    workflow = wf({
        "1": ("LoadPipeline", {"source": str(tiny_sd.folder)}),
        "2": ("LoadImage", {"image": str(picture)}),
        "4": ("VAEEncodeSampled", {"vae": link("1", "vae"), "images": link("2", "IMAGE")}),
        "6": ("SetLatentNoiseMask", {"samples": link("4", "latents"), "mask": link("2", "MASK")}),
        "7": ("TextToConditioning", {"tokenizer": link("1", "tokenizer"),
                                     "text_encoder": link("1", "text_encoder"),
                                     "text": "a square"}),
        "8": ("Denoise", {"unet": link("1", "unet"), "scheduler": link("1", "scheduler"),
                          "positive": link("7", "conditioning"),
                          "latents": link("6", "LATENT"), "steps": 3}),
        "9": ("VAEDecode", {"vae": link("1", "vae"), "samples": link("8", "latents")}),
        "10": ("PreviewImage", {"images": link("9", "IMAGE")}),
    })
    result = run(executor, workflow, tmp_path)
    before = result.outputs["4"]["latents"].samples
    after = result.outputs["8"]["latents"].samples
    half = IMAGE_SIZE // 2  # latent cells (factor 2)
    outside = torch.ones(half, half, dtype=torch.bool)
    outside[3:13, 3:13] = False  # cells the bilinear mask touches
    assert torch.equal(after[..., outside], before[..., outside])
    assert float((after[..., 5:11, 5:11] - before[..., 5:11, 5:11]).abs().max()) > 0.1
