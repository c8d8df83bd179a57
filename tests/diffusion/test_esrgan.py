"""ESRGAN (RRDBNet) checkpoints: random weights written in the original layout, BasicSR's
layout and Real-ESRGAN's x2 layout load into our network, which equals a functional
forward pass written here from the keys themselves; tiled upscaling equals the untiled
result; spandrel (when installed) gives the same images."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from nodes.upscalers.layouts import config_of, to_ours
from nodes.upscalers.loading import load_upscaler, with_rrdbnet
from nodes.upscalers.tiles import tiled

NF, GC, BLOCKS = 8, 4, 2


def random_original(ups: int, in_ch: int = 3, seed: int = 0, blocks: int = BLOCKS
                    ) -> dict[str, Tensor]:
    """An original-layout ESRGAN state dict: model.0, model.1.sub.*, then per x2 stage
    (upsample, conv, activation), then the HR and last convolutions."""
    gen = torch.Generator().manual_seed(seed)

    def conv(cin: int, cout: int, key: str, sd: dict[str, Tensor]) -> None:
        sd[f"{key}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * (0.6 / (cin * 9) ** 0.5)
        sd[f"{key}.bias"] = torch.randn(cout, generator=gen) * 0.02

    sd: dict[str, Tensor] = {}
    conv(in_ch, NF, "model.0", sd)
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                cin = NF + (c - 1) * GC
                conv(cin, NF if c == 5 else GC, f"model.1.sub.{b}.RDB{r}.conv{c}.0", sd)
    conv(NF, NF, f"model.1.sub.{blocks}", sd)
    for k in range(ups):
        conv(NF, NF, f"model.{3 + 3 * k}", sd)
    conv(NF, NF, f"model.{3 * ups + 2}", sd)
    conv(NF, 3, f"model.{3 * ups + 4}", sd)
    return sd


def reference_forward(sd: dict[str, Tensor], x: Tensor, ups: int, unshuffle: int = 1) -> Tensor:
    """ESRGAN's forward pass straight from original-layout keys."""
    def conv(key: str, t: Tensor) -> Tensor:
        return F.conv2d(t, sd[f"{key}.weight"], sd[f"{key}.bias"], padding=1)

    def act(t: Tensor) -> Tensor:
        return F.leaky_relu(t, 0.2)

    if unshuffle > 1:
        x = F.pixel_unshuffle(x, unshuffle)
    fea = conv("model.0", x)
    trunk = fea
    for b in range(BLOCKS):
        block_in = trunk
        for r in (1, 2, 3):
            feats = [trunk]
            for c in range(1, 5):
                feats.append(act(conv(f"model.1.sub.{b}.RDB{r}.conv{c}.0", torch.cat(feats, 1))))
            trunk = conv(f"model.1.sub.{b}.RDB{r}.conv5.0", torch.cat(feats, 1)) * 0.2 + trunk
        trunk = trunk * 0.2 + block_in
    fea = fea + conv(f"model.1.sub.{BLOCKS}", trunk)
    for k in range(ups):
        fea = act(conv(f"model.{3 + 3 * k}", F.interpolate(fea, scale_factor=2, mode="nearest")))
    return conv(f"model.{3 * ups + 4}", act(conv(f"model.{3 * ups + 2}", fea)))


def to_basicsr(sd: dict[str, Tensor], ups: int, blocks: int = BLOCKS) -> dict[str, Tensor]:
    """The same weights under BasicSR's names, renamed here by hand."""
    names = {"model.0": "conv_first", f"model.1.sub.{blocks}": "conv_body",
             f"model.{3 * ups + 2}": "conv_hr", f"model.{3 * ups + 4}": "conv_last"}
    names.update({f"model.{3 + 3 * k}": f"conv_up{k + 1}" for k in range(ups)})
    out = {}
    for key, value in sd.items():
        stem, kind = key.rsplit(".", 1)
        if stem in names:
            out[f"{names[stem]}.{kind}"] = value
        else:
            _, _, _, b, rdb, conv, _ = stem.split(".")
            out[f"body.{b}.{rdb.lower()}.{conv}.{kind}"] = value
    return out


@pytest.fixture(scope="module")
def image() -> Tensor:
    torch.manual_seed(1)
    base = torch.rand(1, 3, 12, 12)
    return F.interpolate(base, size=(40, 56), mode="bilinear").clamp(0, 1)


@pytest.mark.parametrize("ups", [1, 2, 3])
def test_original_layout_loads_and_equals_reference(ups: int, image: Tensor) -> None:
    sd = random_original(ups)
    loaded = with_rrdbnet(sd)
    assert loaded.scale == 2 ** ups
    cfg = config_of(to_ours(sd))
    assert (cfg.features, cfg.growth, cfg.blocks, cfg.upsamples) == (NF, GC, BLOCKS, ups)
    with torch.no_grad():
        ours = loaded.run(image)
        theirs = reference_forward(sd, image, ups)
    assert ours.shape == (1, 3, 40 * 2 ** ups, 56 * 2 ** ups)
    assert float((ours - theirs).abs().max()) < 1e-5
    assert float(theirs.std()) > 1e-3


def test_basicsr_layout_with_wrapper_and_prefix_loads(image: Tensor) -> None:
    sd = random_original(2)
    basicsr = {f"module.{k}": v for k, v in to_basicsr(sd, 2).items()}
    loaded = with_rrdbnet({"params_ema": basicsr})
    assert loaded.scale == 4
    with torch.no_grad():
        diff = (loaded.run(image) - reference_forward(sd, image, 2)).abs().max()
    assert float(diff) < 1e-5


@pytest.mark.parametrize("unshuffle,scale", [(2, 2), (4, 1)])
def test_real_esrgan_unshuffled_input(unshuffle: int, scale: int, image: Tensor) -> None:
    """Real-ESRGAN x2plus (and x1) run the 4x network on a pixel-unshuffled input."""
    sd = random_original(2, in_ch=3 * unshuffle ** 2)
    loaded = with_rrdbnet(to_basicsr(sd, 2))
    assert loaded.scale == scale
    with torch.no_grad():
        ours = loaded.run(image)
        theirs = reference_forward(sd, image, 2, unshuffle)
    assert ours.shape == (1, 3, 40 * scale, 56 * scale)
    assert float((ours - theirs).abs().max()) < 1e-5


def test_not_an_esrgan_is_refused() -> None:
    with pytest.raises(ValueError, match="RRDBNet"):
        with_rrdbnet({"encoder.weight": torch.zeros(1)})


def receptive_radius(blocks: int) -> int:
    """Low-resolution pixels a 3x3 chain can see: one per convolution before the
    upsampling (first, 15 per block, trunk), and at most two for the four after it."""
    return 2 + blocks * 15 + 2


@pytest.mark.parametrize("layout", ["original", "basicsr"])
def test_tiles_equal_untiled_4x(layout: str) -> None:
    sd = random_original(2, blocks=1)
    loaded = with_rrdbnet(sd if layout == "original" else to_basicsr(sd, 2, blocks=1))
    torch.manual_seed(2)
    x = F.interpolate(torch.rand(1, 3, 20, 24), size=(200, 230), mode="bicubic").clamp(0, 1)
    overlap = 4 * receptive_radius(1)  # a quarter of it (the margin) is the radius
    calls: list[tuple[int, ...]] = []

    def network(t: Tensor) -> Tensor:
        calls.append(tuple(t.shape))
        return loaded.run(t)

    with torch.no_grad():
        whole = loaded.run(x)
        parts = tiled(x, network, 4, tile=160, overlap=overlap, margin=0.25)
    assert len(calls) == 4 and all(c[-1] <= 160 and c[-2] <= 160 for c in calls)
    assert parts.shape == whole.shape == (1, 3, 800, 920)
    assert float((parts - whole).abs().max()) <= 1e-4
    # ComfyUI's blend (no margin) does show the tiles' borders: the check can fail.
    with torch.no_grad():
        feathered = tiled(x, loaded.run, 4, tile=160, overlap=overlap, margin=0.0)
    assert float((feathered - whole).abs().max()) > 1e-4


def comfy_tiled(x: Tensor, fn: Callable[[Tensor], Tensor], scale: int, tile: int,
                overlap: int) -> Tensor:
    """ComfyUI's tiled_scale for one image, written out here as a reference: tiles every
    tile - overlap pixels, each weighted by (t + 1) / feather ramps at all four edges."""
    _, c, h, w = x.shape
    if h <= tile and w <= tile:
        return fn(x)
    out = torch.zeros(1, c, h * scale, w * scale)
    div = torch.zeros_like(out)
    ys = range(0, h - overlap, tile - overlap) if h > tile else [0]
    xs = range(0, w - overlap, tile - overlap) if w > tile else [0]
    for y in ys:
        for x0 in xs:
            th, tw = min(tile, h - y), min(tile, w - x0)
            part = fn(x[:, :, y: y + th, x0: x0 + tw])
            mask = torch.ones_like(part)
            feather = overlap * scale
            for dim in (2, 3):
                if feather >= mask.shape[dim]:
                    continue
                for t in range(feather):
                    mask.narrow(dim, t, 1).mul_((t + 1) / feather)
                    mask.narrow(dim, mask.shape[dim] - 1 - t, 1).mul_((t + 1) / feather)
            region = (slice(None), slice(None), slice(y * scale, (y + th) * scale),
                      slice(x0 * scale, (x0 + tw) * scale))
            out[region] += part * mask
            div[region] += mask
    return out / div


def test_margin_zero_is_comfyui_blend() -> None:
    torch.manual_seed(3)
    x = torch.rand(1, 3, 70, 90)

    def fn(t: Tensor) -> Tensor:  # position-dependent, so any misplaced tile shows
        up = F.interpolate(t, scale_factor=2, mode="nearest")
        return up + t.mean() * 3

    ours = tiled(x, fn, 2, tile=32, overlap=8, margin=0.0)
    theirs = comfy_tiled(x, fn, 2, tile=32, overlap=8)
    assert float((ours - theirs).abs().max()) < 1e-5
    assert float((ours - fn(x)).abs().max()) > 1e-3  # the tiles' means do differ


@pytest.mark.skipif(importlib.util.find_spec("spandrel") is None,
                    reason="spandrel is not installed")
def test_spandrel_gives_the_same_images(image: Tensor) -> None:
    sd = random_original(2)
    ours = load_upscaler(sd, use_spandrel=False)
    theirs = load_upscaler(sd, use_spandrel=True)
    assert theirs.scale == ours.scale == 4
    with torch.no_grad():
        assert float((ours.run(image) - theirs.run(image)).abs().max()) < 1e-4
