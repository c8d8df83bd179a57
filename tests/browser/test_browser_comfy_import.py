"""ComfyUI files on the canvas: dropped or opened, converted by the server, shown as a graph;
with the ComfyUI node pack installed, its default workflow wired and run."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import nodes.comfyui.importer  # noqa: F401  (the server converts with these importers)
from graph_runtime.workflow import import_workflow
from tests.support.comfy_standins import ENCODE, with_subgraph
from tests.support.paths import MODELS

pytestmark = pytest.mark.browser
templates = pytest.importorskip("comfyui_workflow_templates")

DEFAULT_LINKS = {"3": ["model", "positive", "negative", "latent_image"], "4": [], "5": [],
                 "6": ["clip"], "7": ["clip"], "8": ["samples", "vae"], "9": ["images"]}


def default_json() -> str:
    from tools.comfy_templates import templates_dir

    return (templates_dir() / "default.json").read_text(encoding="utf-8")


def drop(page: Any, name: str, payload: str | bytes, mime: str) -> None:
    """Drop a file on the canvas the way a desktop drag does."""
    data = list(payload.encode() if isinstance(payload, str) else payload)
    page.evaluate("""([name, data, mime]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(data)], name, {type: mime}));
        document.querySelector("#graph").dispatchEvent(new DragEvent("drop",
            {dataTransfer: dt, bubbles: true, cancelable: true, clientX: 500, clientY: 300}));
    }""", [name, data, mime])


def wait_for_nodes(page: Any, ids: list[str] | dict[str, Any]) -> None:
    """Wait until the canvas shows exactly these node ids; a count alone can already hold
    for the graph shown before the drop (the default workflow also has seven nodes)."""
    page.wait_for_function("""(ids) => {
        const shown = window.noodle.editor.summary().map(n => n.id).sort();
        return JSON.stringify(shown) === JSON.stringify(ids);
    }""", arg=sorted(ids))


def vae_scale(model: str) -> int:
    """Pixels per latent cell of a diffusers VAE: each encoder block but the last halves."""
    config = json.loads((MODELS / model / "vae" / "config.json").read_text(encoding="utf-8"))
    return 2 ** (len(config["block_out_channels"]) - 1)


def links_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {nid: {k: v for k, v in nd["inputs"].items() if isinstance(v, dict) and "from" in v}
            for nid, nd in doc["nodes"].items()}


def test_dropping_comfyuis_default_json_opens_the_converted_graph(page: Any,
                                                                   server: Any) -> None:
    text = default_json()
    drop(page, "default.json", text, "application/json")
    page.wait_for_function("() => document.querySelector('#workflow-name')"
                           ".textContent.startsWith('default')")
    assert sorted(n["id"] for n in page.evaluate("window.noodle.editor.summary()")) == sorted(
        DEFAULT_LINKS)
    expected = import_workflow(json.loads(text), server.registry)[0].to_dict()
    shown = page.evaluate("window.noodle.editor.serialize()")
    assert {nid: nd["type"] for nid, nd in shown["nodes"].items()} == {
        nid: nd["type"] for nid, nd in expected["nodes"].items()}
    assert links_of(shown) == links_of(expected)  # drawn or kept as written
    assert shown["comfyui"]["prompt"] == expected["comfyui"]["prompt"]


def test_opening_a_comfyui_png_from_the_menu(page: Any, server: Any, tmp_path: Any) -> None:
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 12}, "_meta": {"title": "Twelve"}},
              "2": {"class_type": "ShowInt", "inputs": {"value": ["1", 0]}}}
    info = PngInfo()
    info.add_text("prompt", json.dumps(prompt))
    picture = tmp_path / "from comfy.png"
    Image.new("RGB", (8, 8), "orange").save(picture, pnginfo=info)
    page.set_input_files("#file-input", str(picture))
    page.wait_for_function("() => window.noodle.editor.summary().length === 2")
    nodes = {n["id"]: n for n in page.evaluate("window.noodle.editor.summary()")}
    assert nodes["1"]["title"] == "Twelve" and nodes["1"]["widgets"]["value"] == 12
    assert nodes["2"]["links"] == ["value"]
    assert page.text_content("#workflow-name").startswith("from comfy")
    assert page.problems == []


def test_flattened_subgraph_nodes_keep_their_ids_on_the_canvas(page: Any, server: Any) -> None:
    doc = with_subgraph(ENCODE)
    expected = import_workflow(doc, server.registry)[0].to_dict()
    drop(page, "nested.json", json.dumps(doc), "application/json")
    wait_for_nodes(page, expected["nodes"])
    shown = page.evaluate("window.noodle.editor.serialize()")
    assert sorted(shown["nodes"]) == sorted(expected["nodes"]) and "6:1" in shown["nodes"]
    assert links_of(shown) == links_of(expected)


def test_a_file_nothing_can_read_is_reported(page: Any) -> None:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "orange").save(out, format="PNG")
    before = page.evaluate("window.noodle.editor.serialize()")
    drop(page, "plain.png", out.getvalue(), "image/png")
    page.wait_for_selector(".toast.error")
    assert "carries no workflow" in page.text_content(".toast.error")
    assert page.evaluate("window.noodle.editor.serialize()")["nodes"] == before["nodes"]


def test_comfyuis_default_workflow_is_wired_and_runs(page: Any, server: Any) -> None:
    if "KSampler" not in server.registry:
        pytest.skip("the ComfyUI node pack is not registered")
    drop(page, "default.json", default_json(), "application/json")
    wait_for_nodes(page, DEFAULT_LINKS)
    summary = {n["id"]: n for n in page.evaluate("window.noodle.editor.summary()")}
    assert {nid: sorted(n["links"]) for nid, n in summary.items()} == {
        nid: sorted(names) for nid, names in DEFAULT_LINKS.items()}
    assert not page.is_visible("#messages li.error")
    ed = "window.noodle.editor"
    ckpt = page.evaluate(f"{ed}.node('4').widgets.find(w => w.name === 'ckpt_name')"
                         ".options.values.find(v => v.includes('noodle-tiny'))")
    assert ckpt, "the shipped tiny model is not offered as a checkpoint"
    # ComfyUI's EmptyLatentImage always makes width/8 latent cells, whatever the VAE; the
    # tiny model's VAE turns each cell into 4 pixels, so 128 px asked gives 64 px decoded.
    width, height = 128, 96
    for nid, name, value in (("4", "ckpt_name", ckpt), ("5", "width", width),
                             ("5", "height", height), ("3", "steps", 2)):
        page.evaluate(f"([n, w, v]) => {ed}.setWidget(n, w, v)", [nid, name, value])
    page.click("#graph")
    page.keyboard.press("Control+Enter")
    page.wait_for_function(f"() => {ed}.outputImages('9').some(i => i.loaded)", timeout=120000)
    src = page.evaluate(f"{ed}.outputImages('9')")[0]["src"]
    png = page.request.get(src)
    assert png.status == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.body())) as img:
        scale = vae_scale("noodle-tiny")
        assert img.size == (width // 8 * scale, height // 8 * scale)
        chunks = dict(img.text)
    # Edited since the import: the PNG tells what ran, not the imported ComfyUI record.
    prompt = json.loads(chunks["prompt"])
    assert prompt["5"]["inputs"]["width"] == width and prompt["4"]["inputs"]["ckpt_name"] == ckpt
    assert json.loads(chunks["workflow"])["format"] == "noodle.workflow"
    assert page.problems == []


def test_the_comfyui_pack_is_one_folded_palette_group(page: Any) -> None:
    """ComfyUI's categories nest under one group that starts folded, so the library's own
    groups stay in view; a search opens it, and clearing the search folds it again."""
    if page.evaluate("() => !window.noodle.editor") or page.locator(
            ".palette-item[data-type=KSampler]").count() == 0:
        pytest.skip("the ComfyUI node pack is not registered")
    group = page.locator("#palette > .palette-list > .palette-category",
                         has=page.locator("summary", has_text="ComfyUI")).first
    assert group.locator(":scope > summary").text_content() == "ComfyUI"
    assert group.get_attribute("open") is None
    subs = group.locator(":scope > .palette-sub > summary").all_text_contents()
    assert "sampling" in subs and "loaders" in subs
    assert page.locator(".palette-item[data-type=KSampler]").is_hidden()
    page.fill(".palette-filter", "ksampler")
    assert page.locator(".palette-item[data-type=KSampler]").is_visible()
    page.click("#workflow-button")
    page.click("[data-action=new]")
    page.click(".palette-item[data-type=KSampler]")
    assert [n["type"] for n in page.evaluate("() => window.noodle.editor.summary()")] == [
        "KSampler"]
    page.fill(".palette-filter", "")
    assert group.get_attribute("open") is None
    assert page.locator(".palette-item[data-type=KSampler]").is_hidden()
