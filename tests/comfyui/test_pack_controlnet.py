"""The pack's ControlNet nodes on the embedded tiny model with a random ControlNet made from
its UNet: strength 0 is no control, ControlNetApply (positive only, applied to the
unconditional side by the sampler) equals ControlNetApplyAdvanced over the whole run, two
chained controls at 0.3 and 0.4 equal one at 0.7 (residuals are linear in the strength and
sum), a range changes the result, and ComfyUI's centre-crop resize of the control image."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from nodes.comfyui import latent as latent_nodes
from nodes.comfyui.conditioning import clip_text_encode
from nodes.comfyui.controlnet import canny, controlnet_apply, controlnet_apply_advanced
from nodes.comfyui.guidance.control import crop_resize
from nodes.comfyui.loaders import Checkpoint, checkpoint_loader_simple
from nodes.comfyui.sampling import ksampler_node
from nodes.controlnet import ControlNet, apply_controlnet
from nodes.diffusion.controlnet import controlnet_from_unet
from nodes.types import Conditioning, Image

SIZE, STEPS = 64, 4


@pytest.fixture(scope="module")
def ckpt() -> Checkpoint:
    return checkpoint_loader_simple("noodle-tiny")


@pytest.fixture(scope="module")
def prompts(ckpt: Checkpoint) -> tuple[Conditioning, Conditioning]:
    return (clip_text_encode("a red circle", clip=ckpt.CLIP),
            clip_text_encode("a blue square", clip=ckpt.CLIP))


@pytest.fixture(scope="module")
def cn(ckpt: Checkpoint) -> ControlNet:
    torch.manual_seed(0)
    model = controlnet_from_unet(ckpt.MODEL.unet.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("controlnet_", "controlnet_cond_embedding")):
                p.normal_(0.0, 0.3)
    return ControlNet(model.eval(), "random")


@pytest.fixture(scope="module")
def image() -> Image:
    pixels = torch.zeros(1, SIZE, SIZE, 3)
    pixels[:, 16:48, 16:48] = 1.0
    return Image(pixels)


def sample(ckpt: Checkpoint, positive: Conditioning, negative: Conditioning) -> torch.Tensor:
    latent = latent_nodes.empty_latent_image(SIZE, SIZE, 1)
    return ksampler_node(ckpt.MODEL, 3, STEPS, 5.0, "euler", "normal", positive=positive,
                         negative=negative, latent_image=latent, denoise=1.0).samples


def test_pack_controlnet_nodes(ckpt: Checkpoint, prompts: Any, cn: ControlNet,
                               image: Image) -> None:
    pos, neg = prompts
    plain = sample(ckpt, pos, neg)
    zero = controlnet_apply_advanced(pos, neg, cn, image, 0.0)
    assert zero.positive is pos and zero.negative is neg
    full = controlnet_apply_advanced(pos, neg, cn, image, 0.7)
    controlled = sample(ckpt, full.positive, full.negative)
    assert float((controlled - plain).abs().max()) > 0.05
    # The old node steers the unconditional side too: the same as the advanced one.
    old = sample(ckpt, controlnet_apply(pos, cn, image, 0.7), neg)
    torch.testing.assert_close(old, controlled, atol=0, rtol=0)
    # Chained controls add up: 0.3 + 0.4 of the same ControlNet and image is 0.7.
    first = controlnet_apply_advanced(pos, neg, cn, image, 0.3)
    second = controlnet_apply_advanced(first.positive, first.negative, cn, image, 0.4)
    torch.testing.assert_close(sample(ckpt, second.positive, second.negative), controlled,
                               atol=1e-4, rtol=1e-4)
    # Over the second half only: between no control and control throughout.
    late = controlnet_apply_advanced(pos, neg, cn, image, 0.7, 0.5, 1.0)
    half = sample(ckpt, late.positive, late.negative)
    assert float((half - plain).abs().max()) > 1e-3
    assert float((half - controlled).abs().max()) > 1e-3
    # Our own ApplyControlNet's conditionings run in the pack's sampler as well.
    native = apply_controlnet(pos, neg, cn, image, 0.7)
    torch.testing.assert_close(sample(ckpt, native.positive, native.negative), controlled,
                               atol=0, rtol=0)


def test_centre_crop_resize() -> None:
    """A 4x8 image to a square keeps the middle 4x4 (ComfyUI's "center" crop)."""
    pixels = torch.arange(32, dtype=torch.float32).reshape(1, 1, 4, 8)
    out = crop_resize(pixels, 4, 4)
    torch.testing.assert_close(out, pixels[..., 2:6])


def test_pack_canny_is_white_on_black(image: Image) -> None:
    edges = canny(image, 0.4, 0.8).pixels
    assert edges.shape == (1, SIZE, SIZE, 3)
    assert float(edges[0, 32, 32].max()) == 0.0 and float(edges[0, 16, 32].max()) == 1.0
