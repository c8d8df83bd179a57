"""The mask editor in headless Chromium: paint a mask on a LoadImage node's picture, erase
part of it, undo a stroke, save it as a new input image (transparent = mask), switch back
and forth with the canvas's undo, then queue the shipped inpaint workflow and check that
the paste-back leaves every pixel outside the mask as it was."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support.paths import MODELS, WORKFLOWS

pytestmark = pytest.mark.browser
ED = "window.noodle.editor"


def widget_value(page: Any, nid: str, name: str) -> Any:
    return page.evaluate(f"{ED}.serialize()")["nodes"][nid]["inputs"][name]


def drag(page: Any, points: list[tuple[float, float]]) -> None:
    page.mouse.move(*points[0])
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*p, steps=6)
    page.mouse.up()


def to_screen(box: dict, size: tuple[int, int], x: float, y: float) -> tuple[float, float]:
    """Image pixel (x, y) to the page position over the editor's canvas."""
    return box["x"] + x * box["width"] / size[0], box["y"] + y * box["height"] / size[1]


def test_paint_a_mask_and_inpaint_with_paste_back(page: Any, server: Any, tmp_path: Any) -> None:
    if "InpaintInputs" not in server.registry or not (MODELS / "noodle-tiny").exists():
        pytest.skip("the node library or the embedded model is not available")
    doc = json.loads((WORKFLOWS / "inpaint.json").read_text())
    loader = next(nid for nid, nd in doc["nodes"].items() if nd["type"] == "LoadImage")
    saver = next(nid for nid, nd in doc["nodes"].items() if nd["type"] == "SaveImage")
    for nd in doc["nodes"].values():
        if nd["type"] == "Denoise":
            nd["inputs"]["steps"] = 4
    page.evaluate("(doc) => window.noodle.loadDoc(doc)", doc)
    page.wait_for_timeout(200)

    # The picture to edit goes into the input folder through the node's upload button.
    original_path = WORKFLOWS / "images" / "red_circle.png"
    with page.expect_file_chooser() as chooser:
        page.mouse.click(*page.evaluate(f"{ED}.widgetPosition('{loader}', 'upload image…')"))
    chooser.value.set_files(str(original_path))
    page.wait_for_function(
        f"() => {ED}.serialize().nodes['{loader}'].inputs.image.length === 36")
    uploaded = widget_value(page, loader, "image")

    page.mouse.click(*page.evaluate(f"{ED}.widgetPosition('{loader}', 'edit mask…')"))
    page.wait_for_selector("#mask-editor[data-ready=true]")
    layer = page.locator("#mask-editor .mask-layer")
    box = layer.bounding_box()
    size = (64, 64)
    assert box["width"] > 200  # the small picture is shown enlarged
    page.locator("#mask-editor .mask-size").fill("10")
    assert page.text_content("#mask-editor .mask-size-label") == "10 px"
    drag(page, [to_screen(box, size, 12, 14), to_screen(box, size, 40, 14),
                to_screen(box, size, 40, 30)])
    # A stroke undone, then the eraser takes a bite out of the first stroke.
    drag(page, [to_screen(box, size, 50, 50), to_screen(box, size, 60, 60)])
    page.keyboard.press("Control+z")
    page.click("#mask-editor .mask-erase")
    page.locator("#mask-editor .mask-size").fill("4")
    drag(page, [to_screen(box, size, 20, 8), to_screen(box, size, 20, 20)])
    page.click("#mask-editor .mask-save")
    page.wait_for_function(
        f"() => {ED}.serialize().nodes['{loader}'].inputs.image !== '{uploaded}'")
    assert page.locator("#mask-editor").is_hidden()
    masked_name = widget_value(page, loader, "image")
    with Image.open(server.input_dir / masked_name) as saved:
        rgba = np.asarray(saved.convert("RGBA"))
    with Image.open(original_path) as img:
        original = np.asarray(img.convert("RGB")).astype(np.int16)
    alpha = rgba[..., 3]
    assert rgba.shape == (64, 64, 4)
    assert alpha[14, 30] == 0 and alpha[25, 40] == 0  # painted
    assert alpha[14, 20] == 255  # erased again
    assert alpha[55, 55] == 255 and alpha[2, 2] == 255  # undone stroke, never painted
    opaque = alpha == 255
    assert np.array_equal(rgba[..., :3][opaque], original[opaque].astype(np.uint8))

    # The switch to the new image is a canvas edit: undo and redo it.
    page.evaluate(f"{ED}.history.checkpoint()")
    page.locator("#graph").focus()
    page.keyboard.press("Control+z")
    page.wait_for_function(
        f"() => {ED}.serialize().nodes['{loader}'].inputs.image === '{uploaded}'")
    page.keyboard.press("Control+Shift+z")
    page.wait_for_function(
        f"() => {ED}.serialize().nodes['{loader}'].inputs.image === '{masked_name}'")

    page.click("#queue")
    page.wait_for_function(
        f"() => {ED}.outputImages('{saver}').some(i => i.loaded)", timeout=120000)
    src = page.evaluate(f"{ED}.outputImages('{saver}')")[0]["src"]
    png = page.request.get(src if src.startswith("http") else server.url + src).body()
    with Image.open(io.BytesIO(png)) as out_img:
        out = np.asarray(out_img.convert("RGB")).astype(np.int16)
    assert out.shape == original.shape
    assert int(np.abs(out[opaque] - original[opaque]).max()) <= 2
    inside = alpha == 0
    assert float(np.abs(out[inside] - original[inside]).mean()) > 5  # repainted
    assert page.problems == []
