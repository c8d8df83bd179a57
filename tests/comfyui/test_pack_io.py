"""LoadImage, SaveImage's text chunks and the VAE nodes of the ComfyUI pack."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from graph_runtime import REGISTRY
from graph_runtime.executor import Executor
from nodes.comfyui.loaders import checkpoint_loader_simple
from nodes.comfyui.vae import vae_decode, vae_decode_tiled, vae_encode, vae_encode_tiled
from nodes.images import load_image, png_info
from nodes.types import VAE, Image, Latent
from tests.support.workflows import link, run, wf, workflow_dict


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


def test_png_chunks_of_our_own_workflows() -> None:
    assert texts(png_info(None)) == {}
    ours = {"format": "noodle.workflow", "version": 1, "nodes": {}, "name": "é"}
    assert texts(png_info(ours)) == {"workflow": ours}


DECODE_NODES = {
    "4": ("CheckpointLoaderSimple", {"ckpt_name": "model.safetensors"}),
    "5": ("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1}),
    "8": ("VAEDecode", {"samples": link("5", "LATENT"), "vae": link("4", "VAE")}),
    "9": ("SaveImage", {"images": link("8", "IMAGE"), "filename_prefix": "ComfyUI"}),
}
# The same graph as ComfyUI's API spells it, written out by hand: outputs by index (VAE is
# the loader's third), a source id as a number, titles where its frontend puts them.
DECODE_PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"},
          "_meta": {"title": "My checkpoint"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                       "batch_size": 1}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": [5, 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0],
                                                "filename_prefix": "ComfyUI"}},
}
UI_DOC = {"nodes": [], "links": [], "version": 0.4}


def recorded(**edits: Any) -> dict[str, Any]:
    """The decode graph with its ComfyUI record, node inputs edited as `edits` says
    ({node id: {input: value}}) after the record was made."""
    doc = workflow_dict(DECODE_NODES, comfyui={
        "prompt": DECODE_PROMPT, "extra_pnginfo": {"workflow": UI_DOC, "note": "x"}})
    for nid, inputs in edits.items():
        doc["nodes"][nid]["inputs"].update(inputs)
    return doc


def test_an_unedited_comfyui_run_saves_comfyuis_own_chunks() -> None:
    doc = recorded()
    doc["nodes"]["5"]["ui"] = {"title": "renamed on the canvas"}  # a label, not the graph
    assert texts(png_info(doc)) == {"prompt": DECODE_PROMPT, "workflow": UI_DOC, "note": "x"}


@pytest.mark.parametrize(("edit", "in_api_form"), [
    ({"5": {"width": 128}}, {"5": {"width": 128}}),
    ({"9": {"filename_prefix": "other"}}, {"9": {"filename_prefix": "other"}}),
    ({"8": {"samples": link("4", "MODEL")}}, {"8": {"samples": ["4", 0]}}),
])
def test_an_edited_comfyui_graph_saves_a_fresh_prompt_and_our_workflow(
        edit: dict[str, Any], in_api_form: dict[str, Any]) -> None:
    doc = recorded(**edit)
    chunks = texts(png_info(doc))
    assert set(chunks) == {"prompt", "workflow"}
    assert chunks["workflow"] == {k: v for k, v in doc.items() if k != "comfyui"}
    expected = {nid: (e["class_type"], dict(e["inputs"])) for nid, e in DECODE_PROMPT.items()}
    expected["8"][1]["samples"] = ["5", 0]  # the fresh prompt names sources by string id
    for nid, inputs in in_api_form.items():
        expected[nid][1].update(inputs)
    assert {nid: (e["class_type"], e["inputs"]) for nid, e in chunks["prompt"].items()} == (
        expected)


def test_added_or_removed_nodes_make_the_record_stale() -> None:
    added = recorded()
    added["nodes"]["10"] = {"type": "PreviewImage", "inputs": {"images": link("8", "IMAGE")}}
    assert set(texts(png_info(added))["prompt"]) == {"4", "5", "8", "9", "10"}
    removed = recorded()
    del removed["nodes"]["9"]
    chunks = texts(png_info(removed))
    assert set(chunks["prompt"]) == {"4", "5", "8"} and chunks["workflow"]["nodes"] == (
        removed["nodes"])


def test_save_image_in_a_run_writes_the_record_only_while_it_is_current(
        tmp_path: Path) -> None:
    picture = tmp_path / "in.png"
    PILImage.new("RGB", (8, 8), "orange").save(picture)
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": str(picture)}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                          "filename_prefix": "cf"}}}
    ui = {"nodes": [{"id": 1}, {"id": 2}], "links": [[1, 1, 0, 2, 0, "IMAGE"]]}
    nodes = {"1": ("LoadImage", {"image": str(picture)}),
             "2": ("SaveImage", {"images": link("1", "IMAGE"), "filename_prefix": "cf"})}
    record = {"prompt": prompt, "extra_pnginfo": {"workflow": ui}}
    executor = Executor(REGISTRY)
    first = run(executor, wf(nodes, comfyui=record), tmp_path)
    nodes["2"] = ("SaveImage", {"images": link("1", "IMAGE"), "filename_prefix": "edited"})
    second = run(executor, wf(nodes, comfyui=record), tmp_path)
    with PILImage.open(first.files[0]) as png:
        assert json.loads(png.text["prompt"]) == prompt
        assert json.loads(png.text["workflow"]) == ui
    with PILImage.open(second.files[0]) as png:
        fresh = json.loads(png.text["prompt"])
        ours = json.loads(png.text["workflow"])
    assert fresh["2"]["inputs"] == {"images": ["1", 0], "filename_prefix": "edited"}
    assert ours["format"] == "noodle.workflow" and "comfyui" not in ours
    assert ours["nodes"]["2"]["inputs"]["filename_prefix"] == "edited"


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
