"""The ComfyUI pack's latent, image and conditioning nodes: shapes, resizing methods, batch
indices, noise masks and conditioning options. No model is needed here."""

from __future__ import annotations

import pytest
import torch

from graph_runtime import REGISTRY
from nodes.comfyui import conditioning as cond_nodes
from nodes.comfyui import image as image_nodes
from nodes.comfyui import latent as latent_nodes
from nodes.comfyui.types import NoiseSource
from nodes.comfyui.upscale import bislerp, center_crop
from nodes.guidance import guidance_context
from nodes.types import Conditioning, Image, Latent, Mask


def cond(seed: int = 0, length: int = 77) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(torch.randn(1, length, 8, generator=g),
                        options={"pooled_output": torch.randn(1, 8, generator=g)})


def latent(batch: int = 1, h: int = 8, w: int = 12) -> Latent:
    return Latent(torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(1)))


def test_definitions_keep_comfyuis_names_order_and_outputs() -> None:
    def shape(name: str) -> tuple[list[str], list[str], str]:
        d = REGISTRY[name]
        return list(d.inputs), [o.name for o in d.outputs], d.category

    assert shape("KSampler") == (["model", "seed", "steps", "cfg", "sampler_name",
                                  "scheduler", "positive", "negative", "latent_image",
                                  "denoise"], ["LATENT"], "ComfyUI/sampling")
    assert shape("CheckpointLoaderSimple")[:2] == (["ckpt_name"], ["MODEL", "CLIP", "VAE"])
    assert shape("CLIPTextEncode")[:2] == (["text", "clip"], ["CONDITIONING"])
    assert shape("VAEDecode")[:2] == (["samples", "vae"], ["IMAGE"])
    assert shape("VAEEncode")[:2] == (["pixels", "vae"], ["LATENT"])
    assert shape("LoadImage")[:2] == (["image"], ["IMAGE", "MASK"])
    assert shape("SamplerCustomAdvanced")[:2] == (
        ["noise", "guider", "sampler", "sigmas", "latent_image"],
        ["output", "denoised_output"])
    seed = REGISTRY["KSampler"].inputs["seed"].widget
    assert seed is not None and seed.kind == "seed" and seed.max == 2**64 - 1
    assert REGISTRY["LoadImage"].inputs["image"].widget.upload == "image"
    assert REGISTRY["KSampler"].inputs["positive"].required


def test_empty_latent_image_is_zeros_at_an_eighth() -> None:
    out = latent_nodes.empty_latent_image(64, 96, 3)
    assert tuple(out.samples.shape) == (3, 4, 12, 8) and not out.samples.any()


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic",
                                    "bislerp"])
def test_latent_upscale_methods(method: str) -> None:
    src = latent(2)
    out = latent_nodes.latent_upscale(src, method, 160, 128, "disabled").samples
    assert tuple(out.shape) == (2, 4, 16, 20)
    by = latent_nodes.latent_upscale_by(src, method, 1.5).samples
    assert tuple(by.shape) == (2, 4, 12, 18)
    # Upscaling by 2 and back down keeps the content close for every method.
    assert (out.mean() - src.samples.mean()).abs() < 0.1


def test_latent_upscale_sizes_and_aspect() -> None:
    src = latent(1, 8, 16)  # 64 x 128 pixels
    assert latent_nodes.latent_upscale(src, "bilinear", 0, 0, "disabled") is src
    keep = latent_nodes.latent_upscale(src, "bilinear", 0, 128, "disabled").samples
    assert tuple(keep.shape[-2:]) == (16, 32)
    small = latent_nodes.latent_upscale(src, "bilinear", 8, 8, "disabled").samples
    assert tuple(small.shape[-2:]) == (8, 8)  # never below 64 pixels
    cropped = latent_nodes.latent_upscale(src, "nearest-exact", 64, 64, "center").samples
    torch.testing.assert_close(cropped, src.samples[:, :, :, 4:12])


def test_bislerp_keeps_vector_lengths_where_bilinear_shrinks_them() -> None:
    x = torch.zeros(1, 2, 1, 2)
    x[0, 0, 0, 0] = 1.0  # (1, 0) next to (0, 1)
    x[0, 1, 0, 1] = 1.0
    out = bislerp(x, 4, 1)
    norms = out[0].norm(dim=0)[0]
    torch.testing.assert_close(norms, torch.ones(4), atol=1e-5, rtol=0)
    flat = torch.nn.functional.interpolate(x, size=(1, 4), mode="bilinear")
    assert float(flat[0].norm(dim=0)[0, 1]) < 0.95


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic",
                                    "lanczos"])
def test_image_scale_methods(method: str) -> None:
    img = Image(torch.rand(2, 20, 30, 3, generator=torch.Generator().manual_seed(0)))
    out = image_nodes.image_scale(img, method, 60, 40, "disabled").pixels
    assert tuple(out.shape) == (2, 40, 60, 3)
    assert float(out.min()) >= -0.3 and float(out.max()) <= 1.3  # bicubic overshoots
    assert (out.mean() - img.pixels.mean()).abs() < 0.02
    by = image_nodes.image_scale_by(img, method, 0.5).pixels
    assert tuple(by.shape) == (2, 10, 15, 3)


def test_image_scale_keeps_aspect_and_crops_the_centre() -> None:
    img = Image(torch.rand(1, 20, 40, 3))
    assert tuple(image_nodes.image_scale(img, "bilinear", 0, 10, "disabled").pixels.shape) == (
        1, 10, 20, 3)
    square = image_nodes.image_scale(img, "nearest-exact", 20, 20, "center").pixels
    torch.testing.assert_close(square, img.pixels[:, :, 10:30])
    assert tuple(center_crop(torch.zeros(1, 3, 40, 20), 10, 10).shape) == (1, 3, 20, 20)


def test_batches_keep_their_noise() -> None:
    batch = latent(4)
    full_noise = NoiseSource(9).generate(batch.samples)
    picked = latent_nodes.latent_from_batch(batch, 1, 2)
    assert picked.extra["batch_index"] == [1, 2]
    torch.testing.assert_close(picked.samples, batch.samples[1:3])
    noise = NoiseSource(9).generate(picked.samples, picked.extra["batch_index"])
    torch.testing.assert_close(noise, full_noise[1:3])
    clamped = latent_nodes.latent_from_batch(batch, 60, 5)
    assert clamped.batch == 1 and clamped.extra["batch_index"] == [3]
    repeated = latent_nodes.repeat_latent_batch(picked, 3)
    assert repeated.batch == 6 and repeated.extra["batch_index"] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(repeated.samples[4:], batch.samples[1:3])
    assert latent_nodes.repeat_latent_batch(batch, 2).extra.get("batch_index") is None
    assert not NoiseSource(9, enabled=False).generate(batch.samples).any()


def test_noise_mask_follows_the_batch_nodes() -> None:
    masked = latent_nodes.set_latent_noise_mask(latent(2), Mask(torch.rand(2, 16, 24)))
    assert tuple(masked.extra["noise_mask"].shape) == (2, 1, 16, 24)
    one = latent_nodes.latent_from_batch(masked, 1, 1)
    torch.testing.assert_close(one.extra["noise_mask"], masked.extra["noise_mask"][1:2])
    assert latent_nodes.repeat_latent_batch(masked, 2).extra["noise_mask"].shape[0] == 4


def test_conditioning_nodes_set_options_on_every_entry() -> None:
    a, b = cond(1), cond(2)
    both = cond_nodes.conditioning_combine(a, b)
    assert len(both.parts) == 2 and both.parts[1].embeds is b.embeds
    area = cond_nodes.conditioning_set_area(both, 256, 128, 64, 32, 0.7)
    assert [p.options["area"] for p in area.parts] == [(16, 32, 4, 8)] * 2
    assert all(p.options["strength"] == 0.7 for p in area.parts)
    assert "area" not in both.parts[0].options  # the input is unchanged
    timed = cond_nodes.conditioning_set_timestep_range(a, 0.2, 0.6)
    assert (timed.options["start_percent"], timed.options["end_percent"]) == (0.2, 0.6)
    percent = cond_nodes.conditioning_set_area_percentage(a, 0.5, 0.25, 0.1, 0.2, 1.0)
    assert percent.options["area"] == ("percentage", 0.25, 0.5, 0.2, 0.1)
    masked = cond_nodes.conditioning_set_mask(a, Mask(torch.ones(8, 8)), 0.5, "mask bounds")
    assert masked.options["mask"].shape == (1, 8, 8) and masked.options["set_area_to_bounds"]
    zero = cond_nodes.conditioning_zero_out(both)
    assert not zero.embeds.any() and not zero.parts[1].embeds.any()
    assert not zero.options["pooled_output"].any() and a.options["pooled_output"].any()


def test_only_plain_conditioning_reaches_our_denoise() -> None:
    a = cond(1)
    assert a.is_plain
    for value in (cond_nodes.conditioning_combine(a, cond(2)),
                  cond_nodes.conditioning_set_area(a, 64, 64, 0, 0, 1.0),
                  cond_nodes.conditioning_set_timestep_range(a, 0.0, 0.5)):
        assert not value.is_plain
        with pytest.raises(ValueError, match="Denoise: input 'positive'"):
            guidance_context(value, a, 1, True, torch.device("cpu"), torch.float32)
    context = guidance_context(a, cond(2), 1, True, torch.device("cpu"), torch.float32)
    assert tuple(context.shape) == (2, 77, 8)


def test_image_batch_resizes_the_second_batch_to_the_first() -> None:
    first = torch.rand(2, 8, 12, 3)
    same = torch.rand(1, 8, 12, 3)
    joined = image_nodes.image_batch(Image(first), Image(same)).pixels
    assert joined.shape == (3, 8, 12, 3)
    assert torch.equal(joined[:2], first) and torch.equal(joined[2:], same)
    # A 16x16 image next to 8x12 ones: centre-cropped to 4:3 (16x12 -> rows 2..13), then
    # bilinear to 8x12 — a constant image stays constant, a row gradient keeps its order.
    other = torch.linspace(0, 1, 16).view(1, 16, 1, 1).expand(1, 16, 16, 3).contiguous()
    resized = image_nodes.image_batch(Image(first), Image(other)).pixels[2]
    assert resized.shape == (8, 12, 3)
    column = resized[:, 0, 0]
    assert torch.all(column[1:] > column[:-1])
    assert column[0] > other[0, 2, 0, 0] - 1e-6 and column[-1] < other[0, 13, 0, 0] + 1e-6
