"""The ControlNet nodes called directly: CannyEdges on a drawn square (against kornia and
the square's known outline), ApplyControlNet's chaining and immutability, LoadControlNet's
names in models/controlnet (diffusers folders and single files), the control image's
preparation and the per-step range rule."""

from __future__ import annotations

from pathlib import Path

import kornia
import pytest
import torch

from graph_runtime import Folders
from nodes.control_guidance import (
    CONTROL_OPTION,
    Control,
    control_image,
    controls_of,
    keep,
    split_control,
)
from nodes.controlnet import (
    ControlNet,
    apply_controlnet,
    canny,
    controlnet_choices,
    find_controlnet,
    read_controlnet,
)
from nodes.diffusion.controlnet import ControlNetModel
from nodes.types import Conditioning, Image
from tests.support.controlnet_files import export_original, random_controlnet, save_controlnet
from tests.support.tiny_models import TinyModel

SIZE, LO, HI = 48, 12, 36  # a white square [12, 36) on black


def _square() -> torch.Tensor:
    pixels = torch.zeros(1, SIZE, SIZE, 3)
    pixels[:, LO:HI, LO:HI] = 1.0
    return pixels


def test_canny_finds_the_square_outline() -> None:
    edges = canny(Image(_square()), 0.1, 0.2).pixels
    assert edges.shape == (1, SIZE, SIZE, 3)
    assert torch.equal(edges[..., 0], edges[..., 1]) and torch.equal(edges[..., 0], edges[..., 2])
    on = edges[0, ..., 0] > 0.5
    ys, xs = torch.nonzero(on, as_tuple=True)
    # every edge pixel lies within a pixel of the outline, never inside or far outside it
    dist = torch.minimum(torch.minimum((ys - LO).abs(), (ys - (HI - 1)).abs()),
                         torch.minimum((xs - LO).abs(), (xs - (HI - 1)).abs()))
    inside = (ys >= LO - 1) & (ys <= HI) & (xs >= LO - 1) & (xs <= HI)
    assert bool(inside.all()) and int(dist.max()) <= 1
    # each side is traced along most of its length
    for side in (on[:, LO - 1:LO + 1].any(1), on[:, HI - 1:HI + 1].any(1),
                 on[LO - 1:LO + 1].any(0), on[HI - 1:HI + 1].any(0)):
        assert int(side[LO + 2:HI - 2].sum()) == HI - LO - 4
    # and it is kornia's Canny on the same image
    _, ref = kornia.filters.canny(_square().permute(0, 3, 1, 2), 0.1, 0.2)
    assert torch.equal(edges[..., 0], ref[:, 0])


def test_canny_rejects_crossed_thresholds() -> None:
    with pytest.raises(ValueError, match="low_threshold"):
        canny(Image(_square()), 0.5, 0.2)


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_sd: TinyModel) -> ControlNetModel:
    source = random_controlnet(tiny_sd.pipe.unet, seed=4,
                               conditioning_embedding_out_channels=(8, 16))
    model = ControlNetModel(dict(source.config))
    model.load_state_dict(source.state_dict())
    return model.eval()


def _cond(width: int = 32) -> Conditioning:
    return Conditioning(torch.zeros(1, 77, width), torch.zeros(1, 77, width), ("x",))


def test_apply_chains_and_never_edits_its_inputs(tiny_controlnet: ControlNetModel) -> None:
    pos, neg = _cond(), _cond()
    cn = ControlNet(tiny_controlnet, "tiny")
    once = apply_controlnet(pos, neg, cn, Image(_square()), 0.5, 0.1, 0.9)
    twice = apply_controlnet(once.positive, once.negative, cn, Image(_square()), 0.3)
    assert CONTROL_OPTION not in pos.options and CONTROL_OPTION not in neg.options
    assert len(controls_of(once.positive)) == 1 and len(controls_of(twice.negative)) == 2
    first = controls_of(twice.positive)[0]
    assert (first.strength, first.start, first.end) == (0.5, 0.1, 0.9)
    stripped, _, controls = split_control(twice.positive, twice.negative)
    assert stripped is not None and stripped.is_plain and len(controls) == 2
    with pytest.raises(ValueError, match="start_percent"):
        apply_controlnet(pos, neg, cn, Image(_square()), 1.0, 0.8, 0.2)


def test_keep_is_diffusers_rule() -> None:
    # 4 steps, 0.1..0.8: the first step starts before 0.1, the last ends after 0.8
    assert [keep(i, 4, 0.1, 0.8) for i in range(4)] == [0.0, 1.0, 1.0, 0.0]
    assert [keep(i, 5, 0.0, 1.0) for i in range(5)] == [1.0] * 5


def test_control_image_sized_and_batched(tiny_controlnet: ControlNetModel) -> None:
    c = Control(tiny_controlnet, torch.rand(1, 20, 24, 1))
    image = control_image(c, (16, 12), 4, torch.device("cpu"), torch.float32)
    # 2x the latent (the embedding's one stride), grey to RGB, one image per batch row
    assert image.shape == (4, 3, 32, 24)
    assert torch.equal(image[0], image[3]) and torch.equal(image[0, 0], image[0, 2])
    with pytest.raises(ValueError, match="does not divide"):
        control_image(Control(tiny_controlnet, torch.rand(3, 8, 8, 3)), (4, 4), 4,
                      torch.device("cpu"), torch.float32)


def test_controlnets_listed_and_loaded_from_models(tiny_sd1: TinyModel,
                                                   tmp_path: Path) -> None:
    # SD 1.x's conventions (32 groups, 8 heads): what a single file is read with
    source = random_controlnet(tiny_sd1.pipe.unet, seed=6)
    folder = tmp_path / "controlnet"
    save_controlnet(source, folder / "tiny-diffusers")
    (folder / "sd15").mkdir()
    export_original(source, folder / "sd15" / "tiny_canny.safetensors")
    run_folders = Folders(models=tmp_path)
    names = controlnet_choices(run_folders)
    assert "tiny-diffusers" in names and "sd15/tiny_canny.safetensors" in names
    a = read_controlnet(find_controlnet("tiny-diffusers", run_folders), torch.float32,
                        torch.device("cpu"))
    b = read_controlnet(find_controlnet("sd15/tiny_canny.safetensors", run_folders),
                        torch.float32, torch.device("cpu"))
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(FileNotFoundError):
        find_controlnet("missing.safetensors", run_folders)
