"""Our UNets and VAE against diffusers on identical weights (fp32, 1e-5 relative)."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from nodes.diffusion.checkpoints import load_model_folder
from nodes.diffusion.unet import UNet2DConditionModel
from nodes.diffusion.unet2d import UNet2DModel
from nodes.diffusion.vae import AutoencoderKL
from tests.support.model_configs import (
    SDXL_POOLED,
    SDXL_REFINER_UNET,
    SDXL_TIME_DIM,
    SDXL_UNET,
    UNET2D_CONFIGS,
    UNET_COND_CONFIGS,
    VAE_CONFIGS,
)
from tests.support.tiny_models import rel_err

TOL = 1e-5


def _pair(kind: str, ours_cls: type, cfg: dict[str, Any], tmp_path: Path) -> tuple[Any, Any]:
    """diffusers' model `kind` with seed-0 random weights, and ours loaded from its folder."""
    import diffusers

    torch.manual_seed(0)
    ref = getattr(diffusers, kind)(**cfg).eval()
    ref.save_pretrained(str(tmp_path / "model"))
    return ref, load_model_folder(tmp_path / "model", ours_cls, None, "cpu")


# SDXL base and refiner: the text_time embedding of pooled text and micro-conditioning.
COND_CONFIGS = {**UNET_COND_CONFIGS, "sdxl_base": SDXL_UNET, "sdxl_refiner": SDXL_REFINER_UNET}


def _added(cfg: dict[str, Any], gen: torch.Generator) -> dict[str, torch.Tensor] | None:
    """Pooled text embeddings and micro-conditioning numbers for an SDXL config."""
    if cfg.get("addition_embed_type") != "text_time":
        return None
    n_ids = (cfg["projection_class_embeddings_input_dim"] - SDXL_POOLED) // SDXL_TIME_DIM
    ids = torch.tensor([[1024.0, 768, 0, 64, 1024, 1024][:n_ids],
                        [512.0, 512, 32, 0, 6.0, 512][:n_ids]])
    return {"text_embeds": torch.randn(2, SDXL_POOLED, generator=gen), "time_ids": ids}


@pytest.mark.parametrize("name", sorted(COND_CONFIGS))
def test_unet_condition_matches_diffusers(name: str, tmp_path: Path) -> None:
    cfg = COND_CONFIGS[name]
    ref, ours = _pair("UNet2DConditionModel", UNet2DConditionModel, cfg, tmp_path)
    assert dict(ours.config)["block_out_channels"] == tuple(cfg["block_out_channels"])
    gen = torch.Generator().manual_seed(1)
    c_in = cfg.get("in_channels", 4)
    added = _added(cfg, gen)
    # One size divisible by the UNet's downsampling factor and one that is not.
    for size in ((16, 16), (13, 11)):
        x = torch.randn(2, c_in, *size, generator=gen)
        ctx = torch.randn(2, 7, cfg["cross_attention_dim"], generator=gen)
        t = torch.tensor([3, 801])
        with torch.no_grad():
            expected = ref(x, t, ctx, added_cond_kwargs=added).sample
            got = ours(x, t, ctx, added_cond_kwargs=added)
        assert got.shape == expected.shape
        assert rel_err(got, expected) < TOL
    with torch.no_grad():  # scalar timestep, sliced attention
        ours.set_attention_slice("max")
        assert rel_err(ours(x, 500, ctx, added), ref(x, 500, ctx, added_cond_kwargs=added)
                       .sample) < TOL
        ours.set_attention_slice(3)
        assert rel_err(ours(x, 500.0, ctx, added), ref(x, 500.0, ctx, added_cond_kwargs=added)
                       .sample) < TOL
    if added is not None:  # the micro-conditioning reaches the output
        other = {**added, "time_ids": added["time_ids"] + 64}
        with torch.no_grad():
            assert rel_err(ours(x, 500, ctx, other), ours(x, 500, ctx, added)) > 1e-4


def test_sdxl_unet_without_added_conditions_is_a_clear_error() -> None:
    model = UNet2DConditionModel(SDXL_UNET)
    with pytest.raises(ValueError, match="added_cond_kwargs"):
        model(torch.zeros(1, 4, 8, 8), 10, torch.zeros(1, 7, 128))


@pytest.mark.parametrize("name", sorted(UNET2D_CONFIGS))
def test_unet2d_matches_diffusers(name: str, tmp_path: Path) -> None:
    cfg = UNET2D_CONFIGS[name]
    ref, ours = _pair("UNet2DModel", UNet2DModel, cfg, tmp_path)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, cfg.get("in_channels", 3), 16, 16, generator=gen)
    for t in (torch.tensor([10, 990]), 500):
        with torch.no_grad():
            assert rel_err(ours(x, t), ref(x, t).sample) < TOL


@pytest.mark.parametrize("name", sorted(VAE_CONFIGS))
def test_vae_matches_diffusers(name: str, tmp_path: Path) -> None:
    cfg = VAE_CONFIGS[name]
    ref, ours = _pair("AutoencoderKL", AutoencoderKL, cfg, tmp_path)
    assert ours.config["scaling_factor"] == ref.config.scaling_factor
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, cfg.get("in_channels", 3), 32, 32, generator=gen)
    z = torch.randn(2, cfg["latent_channels"], 8, 8, generator=gen)
    with torch.no_grad():
        dist_ref = ref.encode(x).latent_dist
        dist = ours.encode(x)
        assert rel_err(dist.mean, dist_ref.mean) < TOL
        assert rel_err(dist.logvar, dist_ref.logvar) < TOL
        assert torch.equal(dist.mode(), dist.mean)
        sample = dist.sample(torch.Generator().manual_seed(7))
        sample_ref = dist_ref.sample(torch.Generator().manual_seed(7))
        assert rel_err(sample, sample_ref) < TOL
        assert rel_err(ours.decode(z), ref.decode(z).sample) < TOL


def test_vae_banded_decode_matches_diffusers(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from nodes.diffusion.resnet import Upsample2D

    monkeypatch.setattr(Upsample2D, "BAND_MIN_PIXELS", 1)
    monkeypatch.setattr(Upsample2D, "BAND_ROWS", 3)
    ref, ours = _pair("AutoencoderKL", AutoencoderKL, VAE_CONFIGS["groups8_no_quant"], tmp_path)
    z = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert rel_err(ours.decode(z), ref.decode(z).sample) < TOL


def test_vae_slicing_and_tiling_match_diffusers(tmp_path: Path) -> None:
    cfg = dict(VAE_CONFIGS["sd_like"], sample_size=16)
    ref, ours = _pair("AutoencoderKL", AutoencoderKL, cfg, tmp_path)
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(3, 4, 19, 14, generator=gen)   # several overlapping 8x8 latent tiles
    x = torch.randn(2, 3, 40, 28, generator=gen)
    with torch.no_grad():
        plain = ours.decode(z)
        ours.enable_slicing()
        ref.enable_slicing()
        assert rel_err(ours.decode(z), plain) < TOL
        ours.enable_tiling()
        ref.enable_tiling()
        tiled = ours.decode(z)
        assert tiled.shape == plain.shape
        assert rel_err(tiled, ref.decode(z).sample) < TOL
        assert rel_err(tiled, plain) > 1e-3  # tiling really happened
        enc = ours.encode(x).mean
        assert rel_err(enc, ref.encode(x).latent_dist.mean) < TOL
        ours.disable_tiling()
        ours.disable_slicing()
        assert rel_err(ours.decode(z), plain) < TOL


def test_models_train_with_autograd() -> None:
    """Gradients equal diffusers'; checkpointing changes memory, not results."""
    import diffusers

    cfg = UNET_COND_CONFIGS["sd2_like"]
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**cfg)
    ours = UNet2DConditionModel(dict(ref.config))
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 5, 48, generator=gen)
    ref(x, 10, ctx).sample.square().mean().backward()
    ours(x, 10, ctx).square().mean().backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        assert rel_err(p.grad, ref_grads[name].grad) < 1e-4, name
    first = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ours.zero_grad()
    ours.enable_gradient_checkpointing()
    ours.train()
    ours(x, 10, ctx).square().mean().backward()
    assert all(rel_err(p.grad, first[n]) < 1e-4 for n, p in ours.named_parameters())

    vae = AutoencoderKL(VAE_CONFIGS["sd_like"])
    opt = torch.optim.SGD(vae.parameters(), lr=0.1)
    img = torch.randn(1, 3, 16, 16)
    loss = (vae(img, sample_posterior=True) - img).square().mean()
    loss.backward()
    before = vae.decoder.conv_out.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, vae.decoder.conv_out.weight)


def test_config_is_frozen_and_has_diffusers_defaults() -> None:
    unet = UNet2DConditionModel(UNET_COND_CONFIGS["sd1_like"])
    assert unet.config["flip_sin_to_cos"] is True and unet.config.freq_shift == 0
    assert unet.in_channels == 4 and unet.dtype == torch.float32
    assert unet.device.type == "cpu"
    with pytest.raises(TypeError):
        unet.config["in_channels"] = 3  # type: ignore[index]
    with pytest.raises(AttributeError):
        unet.config.in_channels = 3
    with pytest.raises(ValueError, match="addition_embed_type"):
        UNet2DConditionModel(dict(UNET_COND_CONFIGS["sd1_like"], addition_embed_type="text_time"))
    with pytest.raises(ValueError, match="slice_size"):
        unet.set_attention_slice("sometimes")
    clone = copy.deepcopy(unet)  # EMA copies and caches deep-copy models
    assert clone.config == unet.config and clone.config is not unet.config
    assert pickle.loads(pickle.dumps(unet.config))["cross_attention_dim"] == 32


def test_channels_last_and_inference_in_place_paths_match() -> None:
    """channels_last weights/inputs, and no_grad (in-place) vs grad-tracking forward."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(UNET_COND_CONFIGS["sd2_like"]).eval()
    gen = torch.Generator().manual_seed(6)
    x, ctx = torch.randn(2, 4, 16, 16, generator=gen), torch.randn(2, 5, 48, generator=gen)
    tracked = unet(x, 20, ctx)
    with torch.no_grad():
        plain = unet(x, 20, ctx)
        assert rel_err(plain, tracked.detach()) < TOL
        unet.to(memory_format=torch.channels_last)
        fast = unet(x.to(memory_format=torch.channels_last), 20, ctx)
        assert rel_err(fast, plain) < TOL


@pytest.mark.parametrize("size", [(4, 4), (8, 8), (5, 7), (16, 16)])
def test_small_map_convolution_equals_conv2d(size: tuple[int, int]) -> None:
    """The CPU matrix-product path for small maps is the same convolution."""
    from nodes.diffusion.resnet import Conv2d

    torch.manual_seed(0)
    conv = Conv2d(24, 40, 3, padding=1)
    x = torch.randn(3, 24, *size)
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    with torch.no_grad():
        assert rel_err(conv(x), expected) < TOL
    assert rel_err(conv(x), expected) < TOL  # autograd path: the ordinary convolution


@pytest.mark.parametrize("size", [(6, 5), (33, 20)])
def test_banded_upsampling_equals_full(size: tuple[int, int]) -> None:
    """Upsample-then-convolve in row bands (large maps, inference) is the full operation."""
    from nodes.diffusion.resnet import Upsample2D

    torch.manual_seed(0)
    up = Upsample2D(8, 6)
    up.BAND_MIN_PIXELS, up.BAND_ROWS = 1, 4
    x = torch.randn(2, 8, *size)
    full = up.conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    with torch.no_grad():
        banded = up(x)
    assert banded.shape == full.shape
    assert rel_err(banded, full) < TOL
