"""Upscale model nodes on files in a models folder: LoadUpscaleModel + UpscaleImage and the
ComfyUI pack's UpscaleModelLoader + ImageUpscaleWithModel give the network's images (a
forward pass written in tests/diffusion/test_esrgan.py from the file's own keys), whole or
in tiles; the shipped tiny model and upscale_esrgan.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from safetensors.torch import save_file

from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from graph_runtime.settings import Folders
from nodes.upscale_model import upscale_model_choices
from tests.diffusion.test_esrgan import random_original, reference_forward, to_basicsr
from tests.support.paths import MODELS
from tests.support.workflows import link, run, shipped, workflow_dict

SHIPPED_MODEL = MODELS / "upscale_models" / "noodle-tiny-esrgan-2x.safetensors"


def visible(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Random weights whose output sits around mid grey with some contrast, so clamping
    to 0..1 keeps it."""
    sd = dict(sd)
    sd["model.10.weight"] = sd["model.10.weight"] * 10
    sd["model.10.bias"] = sd["model.10.bias"] + 0.5
    return sd


NETWORKS = {"esrgan-4x.pth": visible(random_original(2)),
            "realesrgan-2x.safetensors": visible(random_original(2, in_ch=12, seed=1))}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Folders:
    root = tmp_path_factory.mktemp("upscale")
    models = root / "models" / "upscale_models"
    models.mkdir(parents=True)
    torch.save({"params_ema": NETWORKS["esrgan-4x.pth"]}, models / "esrgan-4x.pth")
    save_file(to_basicsr(NETWORKS["realesrgan-2x.safetensors"], 2),
              str(models / "realesrgan-2x.safetensors"))
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(models / "not-esrgan.safetensors"))
    (root / "input").mkdir()
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    picture = PILImage.fromarray(small).resize((120, 100), PILImage.Resampling.BICUBIC)
    picture.save(root / "input" / "picture.png")
    return Folders(output=root / "output", input=root / "input", models=root / "models",
                   user=root / "user")


@pytest.fixture(scope="module")
def executor(folders: Folders) -> Executor:
    return Executor(REGISTRY, folders=folders)


def picture(folders: Folders) -> torch.Tensor:
    arr = np.array(PILImage.open(folders.input / "picture.png").convert("RGB"))
    return torch.from_numpy(arr).float().div(255).permute(2, 0, 1)[None]


def both_ways(name: str, tile: int = 512, overlap: int = 32) -> dict:
    return workflow_dict({
        "1": ("LoadImage", {"image": "picture.png"}),
        "2": ("LoadUpscaleModel", {"name": name}),
        "3": ("UpscaleImage", {"model": link("2", "model"), "image": link("1", "IMAGE"),
                               "tile_size": tile, "overlap": overlap}),
        "4": ("PreviewImage", {"images": link("3", "images")}),
        "5": ("UpscaleModelLoader", {"model_name": name}),
        "6": ("ImageUpscaleWithModel", {"upscale_model": link("5", "UPSCALE_MODEL"),
                                        "image": link("1", "IMAGE")}),
        "7": ("PreviewImage", {"images": link("6", "IMAGE")}),
    })


def test_choices_list_the_folder(folders: Folders) -> None:
    assert {"esrgan-4x.pth", "realesrgan-2x.safetensors"} <= set(
        upscale_model_choices(folders))


@pytest.mark.parametrize("name,scale,unshuffle", [
    ("esrgan-4x.pth", 4, 1), ("realesrgan-2x.safetensors", 2, 2)])
def test_nodes_give_the_networks_images(name: str, scale: int, unshuffle: int,
                                        folders: Folders, executor: Executor,
                                        tmp_path: Path) -> None:
    result = run(executor, both_ways(name), tmp_path)
    ours = result.outputs["3"]["images"].pixels
    pack = result.outputs["6"]["IMAGE"].pixels
    x = picture(folders)
    with torch.no_grad():
        ref = reference_forward(NETWORKS[name], x, 2, unshuffle)
    assert 0.02 < float(ref.std()) and 0.5 < float(((ref > 0) & (ref < 1)).float().mean())
    ref = ref.clamp(0, 1).permute(0, 2, 3, 1)
    assert ours.shape == (1, 100 * scale, 120 * scale, 3)
    assert float((ours - ref).abs().max()) < 1e-5
    assert float((pack - ref).abs().max()) < 1e-5


def test_small_tiles_stay_close_to_the_whole(executor: Executor, tmp_path: Path) -> None:
    whole = run(executor, both_ways("esrgan-4x.pth"), tmp_path).outputs["3"]["images"]
    events: list[dict] = []
    result = executor.run(both_ways("esrgan-4x.pth", tile=64, overlap=16),
                          on_event=events.append, output_dir=tmp_path)
    assert result.ok
    tiles = result.outputs["3"]["images"]
    progress = [(e["step"], e["total"]) for e in events
                if e["type"] == "progress" and e["node"] == "3"]
    assert progress == [(i, 6) for i in range(1, 7)]  # 120 x 100: 3 x 2 tiles of 64
    assert tiles.pixels.shape == whole.pixels.shape
    diff = (tiles.pixels - whole.pixels).abs()
    assert float(diff.max()) > 0  # tiled for real
    assert float(diff.mean()) < 0.02


def test_a_file_that_is_not_esrgan_is_a_clear_error(executor: Executor,
                                                     tmp_path: Path) -> None:
    result = executor.run(both_ways("not-esrgan.safetensors"), output_dir=tmp_path)
    assert not result.ok
    assert "RRDBNet" in result.error["message"]


@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason="the shipped upscale model is absent")
def test_shipped_workflow_doubles_the_picture(tmp_path: Path) -> None:
    """upscale_esrgan.json as shipped: 64x64 in, 128x128 out, close to the picture it
    enlarges (the tiny model learned on the same kind of shapes)."""
    wf = shipped("upscale_esrgan.json")
    result = run(Executor(REGISTRY), wf, tmp_path)
    (png,) = result.files
    src = np.asarray(PILImage.open(Path("workflows/images/red_circle.png")).convert("RGB"),
                     dtype=np.float32)
    with PILImage.open(png) as img:
        big = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert big.shape == (128, 128, 3)
    back = np.asarray(PILImage.fromarray(big.astype(np.uint8)).resize(
        (64, 64), PILImage.Resampling.BOX), dtype=np.float32)
    assert float(np.abs(back - src).mean()) < 6.0
