"""The models browser in headless Chromium: it lists the model folders with sizes and
families, dragging a model onto the canvas adds its loader with the model chosen and
selected, an embedding dropped on a prompt is added to its text, and Refresh lists a file
added meanwhile and gives the choice widgets the new list without a reload."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from graph_runtime.server import create_app
from tests.browser.conftest import combined_registry
from tests.support.browser import ServerThread
from tests.support.toy_nodes import image_workflow

pytestmark = pytest.mark.browser
ED = "window.noodle.editor"


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.clone() for k, v in tensors.items()}, str(path))


@pytest.fixture(scope="module")
def models_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real server over a models folder of a few small files (the embedded models are
    listed beside them)."""
    root = tmp_path_factory.mktemp("noodle-models")
    models = root / "models"
    models.mkdir()
    _write(models / "checkpoints" / "photo-v1.safetensors",
           {"cond_stage_model.transformer.text_model.w": torch.zeros(2, 2),
            "model.diffusion_model.out.2.weight": torch.zeros(2, 2)})
    _write(models / "loras" / "style.safetensors",
           {"lora_unet_a.lora_down.weight": torch.zeros(4, 4)})
    _write(models / "embeddings" / "bad-hands.safetensors", {"emb_params": torch.zeros(2, 768)})
    _write(models / "vae" / "ft-mse.safetensors", {"decoder.conv_in.weight": torch.zeros(2, 2)})
    shipped = root / "workflows"
    shipped.mkdir()
    (shipped / "txt2img.json").write_text(json.dumps(image_workflow(steps=2, name="txt2img")))
    reg, loaded = combined_registry()
    if not loaded:
        pytest.skip("the node library does not import here")
    for name in ("model_library", "model_folders"):  # the library's model lists
        reg.provide(name, REGISTRY.provider(name))
    folders = Folders(output=root / "output", input=root / "input", models=models,
                      user=root / "user", temp_dir=root / "temp")
    thread = ServerThread(create_app(Executor(reg, folders=folders), workflows_dir=shipped))
    thread.start()
    thread.models = models  # type: ignore[attr-defined]
    yield thread
    thread.stop()


@pytest.fixture
def mpage(browser: Any, models_server: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 860})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.problems = problems
    pg.goto(models_server.url + "/")
    pg.wait_for_selector("body[data-ready=true]", timeout=15000)
    yield pg
    context.close()


def open_browser(page: Any) -> None:
    page.keyboard.press("m")
    page.wait_for_selector(".model-item[data-name='style.safetensors']")


def drop_model(page: Any, name: str, x: float, y: float) -> None:
    """An HTML5 drag from the panel onto the canvas: the item's own dragstart fills the
    DataTransfer that the drop on the canvas at (x, y) receives."""
    page.evaluate("""([name, x, y]) => {
        const dt = new DataTransfer();
        const item = document.querySelector(`.model-item[data-name='${name}']`);
        item.dispatchEvent(new DragEvent("dragstart", {dataTransfer: dt, bubbles: true}));
        const graph = document.querySelector("#graph");
        for (const type of ["dragover", "drop"]) graph.dispatchEvent(new DragEvent(type,
            {dataTransfer: dt, bubbles: true, cancelable: true, clientX: x, clientY: y}));
        item.dispatchEvent(new DragEvent("dragend", {dataTransfer: dt, bubbles: true}));
    }""", [name, x, y])


def test_lists_kinds_with_size_and_family(mpage: Any) -> None:
    open_browser(mpage)
    kinds = mpage.eval_on_selector_all(".models-kind", "ds => ds.map(d => d.dataset.kind)")
    assert kinds == ["checkpoints", "vae", "loras", "embeddings", "controlnet", "upscale_models"]
    photo = mpage.locator(".model-item[data-name='photo-v1.safetensors'] .model-meta").inner_text()
    assert photo.startswith("SD 1.x") and photo.endswith("B")
    tiny = "[data-kind=checkpoints] .model-item[data-name='noodle-tiny']"
    assert mpage.locator(tiny).count() == 1
    mpage.fill("#models .palette-filter", "hands")
    assert mpage.locator(".model-item:visible").count() == 1
    assert mpage.problems == []


def test_dragging_a_model_adds_its_loader_selected(mpage: Any) -> None:
    open_browser(mpage)
    mpage.click("#workflow-button")
    mpage.click("[data-action=new]")
    box = mpage.locator("#graph").bounding_box()
    at = (box["x"] + 420, box["y"] + 260)
    drop_model(mpage, "style.safetensors", *at)
    mpage.wait_for_function(f"() => {ED}.summary().length === 1")
    (lora,) = mpage.evaluate(f"{ED}.summary()")
    assert lora["type"] == "LoadLoRA" and lora["widgets"]["name"] == "style.safetensors"
    assert mpage.evaluate(f"{ED}.selectedIds()") == [lora["id"]]
    pos = mpage.evaluate(f"[...{ED}.node('{lora['id']}').pos]")
    expected = mpage.evaluate(f"{ED}.screenToGraph({at[0]}, {at[1]})")
    assert abs(pos[0] - expected[0]) < 2 and abs(pos[1] - expected[1]) < 2
    drop_model(mpage, "photo-v1.safetensors", box["x"] + 200, box["y"] + 500)
    mpage.wait_for_function(f"() => {ED}.summary().length === 2")
    ckpt = mpage.evaluate(f"{ED}.summary()")[1]
    assert ckpt["type"] == "LoadPipeline" and ckpt["widgets"]["source"] == "photo-v1.safetensors"
    assert mpage.evaluate(f"{ED}.selectedIds()") == [ckpt["id"]]
    mpage.click(".model-item[data-name='ft-mse.safetensors']")  # a click adds it too
    mpage.wait_for_function(f"() => {ED}.summary().length === 3")
    vae = mpage.evaluate(f"{ED}.summary()")[2]
    assert vae["type"] == "LoadVAE" and vae["widgets"]["source"] == "vae/ft-mse.safetensors"
    # An embedding dropped on a prompt goes to the end of its text.
    prompt = mpage.evaluate(f"{ED}.addNode('TextToConditioning', [700, 120])")
    mpage.evaluate(f"{ED}.setWidget('{prompt}', 'text', 'a cat')")
    title = mpage.evaluate(f"""(() => {{ const n = {ED}.node('{prompt}');
        return {ED}.graphToScreen(n.pos[0] + n.size[0] / 2, n.pos[1] + 40); }})()""")
    drop_model(mpage, "bad-hands.safetensors", *title)
    mpage.wait_for_function(f"""() => {ED}.summary().find(n => n.id === '{prompt}')
        .widgets.text === 'a cat embedding:bad-hands'""")
    assert len(mpage.evaluate(f"{ED}.summary()")) == 4
    mpage.keyboard.press("Control+z")
    mpage.wait_for_function(f"""() => {ED}.summary().find(n => n.id === '{prompt}')
        .widgets.text === 'a cat'""")
    assert mpage.problems == []


def test_refresh_lists_a_new_file_and_updates_choices(mpage: Any, models_server: Any) -> None:
    open_browser(mpage)
    mpage.click("#workflow-button")
    mpage.click("[data-action=new]")
    lora = mpage.evaluate(f"{ED}.addNode('LoadLoRA', [300, 200])")
    values = f"{ED}.node('{lora}').widgets.find(w => w.name === 'name').options.values"
    assert "fresh.safetensors" not in mpage.evaluate(values)
    _write(models_server.models / "loras" / "sub" / "fresh.safetensors",
           {"lora_unet_b.lora_up.weight": torch.zeros(4, 4)})
    assert mpage.locator(".model-item[data-name='sub/fresh.safetensors']").count() == 0
    mpage.click("#models-refresh")
    mpage.wait_for_selector(".model-item[data-name='sub/fresh.safetensors']")
    mpage.wait_for_function(f"() => {values}.includes('sub/fresh.safetensors')")
    # New nodes of the type offer it too.
    other = mpage.evaluate(f"{ED}.addNode('LoadLoRA', [300, 500])")
    assert "sub/fresh.safetensors" in mpage.evaluate(
        f"{ED}.node('{other}').widgets.find(w => w.name === 'name').options.values")
    assert mpage.problems == []
