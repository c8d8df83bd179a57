"""What a re-run recomputes (seed change, prompt change), that models are never reloaded,
and that a saved PNG carries a workflow that re-runs to the same image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from graph_runtime.cache import OutputCache, measure
from graph_runtime.executor import Executor
from graph_runtime.graph import validate
from graph_runtime.registry import REGISTRY
from graph_runtime.workflow import apply_overrides, load_workflow
from nodes.diffusion import checkpoints
from tests.support.model_configs import IMAGE_SIZE
from tests.support.tiny_models import TinyModel
from tests.support.workflows import add_nodes, link, run, shipped


@pytest.fixture
def load_count(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every model load goes through `checkpoints.load_components`; count the calls."""
    calls: list[str] = []
    real = checkpoints.load_components

    def counting(source, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(str(source))
        return real(source, **kwargs)

    monkeypatch.setattr(checkpoints, "load_components", counting)
    return calls


def small_txt2img(source: Path, *extra: str):  # type: ignore[no-untyped-def]
    return shipped("txt2img.json", [f"1.source={source}", f"4.width={IMAGE_SIZE}",
                                    f"4.height={IMAGE_SIZE}", "5.steps=3", *extra])


def test_seed_change_reruns_only_noise_denoise_decode_save(
        tiny_sd: TinyModel, tmp_path: Path, load_count: list[str]) -> None:
    ex = Executor(REGISTRY, OutputCache())
    first = run(ex, small_txt2img(tiny_sd.folder), tmp_path)
    assert sorted(first.executed, key=int) == ["1", "2", "3", "4", "5", "6", "7"]
    unet = first.outputs["1"]["unet"]
    assert type(unet.model).__module__.startswith("nodes.diffusion")
    params = sum(t.numel() * t.element_size() for t in unet.model.parameters())
    assert measure(unet)["cpu"] >= params  # models count in the cache by their weights

    again = run(ex, small_txt2img(tiny_sd.folder, "4.seed=123"), tmp_path)
    assert sorted(again.executed, key=int) == ["4", "5", "6", "7"]
    assert "1" in again.cached
    assert again.outputs["1"]["unet"] is unet
    assert load_count == [str(tiny_sd.folder)]
    assert not np.array_equal(first.outputs["6"]["IMAGE"].pixels,
                              again.outputs["6"]["IMAGE"].pixels)

    prompt = run(ex, small_txt2img(tiny_sd.folder, "4.seed=123", "2.text=a green square"),
                 tmp_path)
    assert sorted(prompt.executed, key=int) == ["2", "5", "6", "7"]
    assert load_count == [str(tiny_sd.folder)]


def test_edited_weights_invalidate_the_loader(tiny_sd: TinyModel, tmp_path: Path) -> None:
    """The loader's fingerprint covers the files: touching a weight file reloads."""
    ex = Executor(REGISTRY, OutputCache())
    wf = small_txt2img(tiny_sd.folder)
    before = ex.signatures(wf, output_dir=tmp_path)["1"]
    weights = next((tiny_sd.folder / "unet").glob("*.safetensors"))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        assert ex.signatures(wf, output_dir=tmp_path)["1"] != before
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_png_carries_a_workflow_that_reruns_to_the_same_image(
        tiny_sd: TinyModel, tmp_path: Path) -> None:
    out1, out2 = tmp_path / "first", tmp_path / "second"
    result = run(Executor(REGISTRY, OutputCache()), small_txt2img(tiny_sd.folder, "4.seed=5"),
                 out1)
    (png,) = result.files
    assert Path(png).name == "txt2img_00001_.png"
    with PILImage.open(png) as img:
        embedded = img.text["workflow"]
        pixels = np.asarray(img.convert("RGB"))
    wf = load_workflow(json.loads(embedded))
    assert wf.nodes["4"]["inputs"]["seed"] == 5
    assert validate(wf, REGISTRY) == []
    again = run(Executor(REGISTRY, OutputCache()), wf, out2)
    (png2,) = again.files
    with PILImage.open(png2) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), pixels)


def test_save_never_overwrites(tiny_sd: TinyModel, tmp_path: Path) -> None:
    ex = Executor(REGISTRY, OutputCache())
    (tmp_path / "txt2img_00007_.png").write_bytes(b"not mine")
    wf = small_txt2img(tiny_sd.folder, "4.batch_size=2")
    names = [Path(f).name for f in run(ex, wf, tmp_path).files]
    assert names == ["txt2img_00008_.png", "txt2img_00009_.png"]
    apply_overrides(wf, ["4.seed=1"])
    names = [Path(f).name for f in run(ex, wf, tmp_path).files]
    assert names == ["txt2img_00010_.png", "txt2img_00011_.png"]
    assert (tmp_path / "txt2img_00007_.png").read_bytes() == b"not mine"


def test_preview_image_writes_to_the_temp_folder(tiny_sd: TinyModel, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOODLE_TEMP_DIR", str(tmp_path / "temp"))
    wf = small_txt2img(tiny_sd.folder)
    add_nodes(wf, {"7": ("PreviewImage", {"images": link("6", "IMAGE")})})
    result = run(Executor(REGISTRY, OutputCache()), wf, tmp_path / "output")
    (path,) = result.files
    assert Path(path).parent == tmp_path / "temp" and Path(path).is_file()
    assert result.ui["7"]["images"][0]["type"] == "temp"
    assert not (tmp_path / "output").exists() or not any((tmp_path / "output").iterdir())
