"""The canvas in headless Chromium: loading, adding and wiring nodes, widgets, running the
default workflow, dropping a saved PNG, error badges."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image

from tests.support.workflows import link, workflow_dict

pytestmark = pytest.mark.browser


def summary(page: Any) -> list[dict]:
    return page.evaluate("window.noodle.editor.summary()")


def types(page: Any) -> list[str]:
    return sorted(n["type"] for n in summary(page))


def new_graph(page: Any) -> None:
    page.click("#workflow-button")
    page.click("[data-action=new]")
    assert summary(page) == []


def drag(page: Any, a: list[float], b: list[float]) -> None:
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, steps=4)
    page.mouse.move(*b, steps=4)
    page.mouse.up()


def test_page_loads_default_workflow_without_console_errors(page: Any, server: Any) -> None:
    expected = sorted(n["type"] for n in server.default_workflow["nodes"].values())
    assert types(page) == expected
    assert page.text_content("#workflow-name").startswith("txt2img")
    assert page.locator(".palette-item").count() >= 6
    headers = page.request.get(server.url + "/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    page.wait_for_timeout(300)
    assert page.problems == []


def test_add_nodes_from_palette_and_search(page: Any) -> None:
    new_graph(page)
    page.fill(".palette-filter", "numb")
    assert page.locator(".palette-item[data-type=AddInt]").is_hidden()
    page.click(".palette-item[data-type=Number]")
    assert types(page) == ["Number"]
    page.fill(".palette-filter", "")
    box = page.locator("#graph").bounding_box()
    page.mouse.dblclick(box["x"] + box["width"] - 200, box["y"] + box["height"] - 150)
    page.wait_for_selector(".litesearchbox input")
    page.keyboard.type("ShowInt")
    page.wait_for_function("""() => {
        const items = [...document.querySelectorAll('.litesearchbox .helper > *')];
        return items.length > 0 && items.every(i => i.textContent.includes('ShowInt'));
    }""")
    page.keyboard.press("Enter")
    assert types(page) == ["Number", "ShowInt"]
    assert page.problems == []


def test_valid_link_connects_and_wrong_type_is_refused(page: Any) -> None:
    new_graph(page)
    ed = "window.noodle.editor"
    num = page.evaluate(f"{ed}.addNode('Number', [80, 60])")
    grad = page.evaluate(f"{ed}.addNode('Gradient', [80, 260])")
    add = page.evaluate(f"{ed}.addNode('AddInt', [480, 120])")
    src = page.evaluate(f"{ed}.slotPosition('{num}', 'value', false)")
    dst = page.evaluate(f"{ed}.slotPosition('{add}', 'a', true)")
    drag(page, src, dst)
    links = {n["id"]: n["links"] for n in summary(page)}
    assert links[add] == ["a"]
    doc = page.evaluate(f"{ed}.serialize()")
    assert doc["nodes"][add]["inputs"]["a"] == {"from": num, "output": "value"}
    page.evaluate(f"{ed}.graph.getNodeById({add}).disconnectInput(0)")
    img = page.evaluate(f"{ed}.slotPosition('{grad}', 'image', false)")
    drag(page, img, dst)
    assert {n["id"]: n["links"] for n in summary(page)}[add] == []
    assert page.evaluate(f"{ed}.connect('{grad}', 'image', '{add}', 'a')") is False
    assert page.evaluate(f"{ed}.connect('{num}', 'value', '{add}', 'a')") is True
    # A widget input may be wired too: it becomes a socket and the widget is disabled.
    assert page.evaluate(f"{ed}.connect('{num}', 'value', '{grad}', 'seed')") is True
    doc = page.evaluate(f"{ed}.serialize()")
    assert doc["nodes"][grad]["inputs"]["seed"] == {"from": num, "output": "value"}
    assert page.evaluate(f"{ed}.node('{grad}').widgets.find(w => w.name === 'seed').disabled")
    page.keyboard.press("Escape")
    assert page.problems == []


def test_widget_edit_changes_the_saved_workflow(page: Any) -> None:
    new_graph(page)
    ed = "window.noodle.editor"
    num = page.evaluate(f"{ed}.addNode('Number', [120, 120])")
    page.wait_for_timeout(100)  # one frame, so widget positions are laid out
    more = page.evaluate(f"{ed}.widgetPosition('{num}', 'value', 'more')")
    page.mouse.click(*more)
    page.mouse.click(*more)
    assert page.evaluate(f"{ed}.serialize()")["nodes"][num]["inputs"]["value"] == 5
    page.mouse.click(*page.evaluate(f"{ed}.widgetPosition('{num}', 'value')"))
    page.wait_for_selector(".graphdialog input")
    page.fill(".graphdialog input", "42")
    page.keyboard.press("Enter")
    assert page.evaluate(f"{ed}.serialize()")["nodes"][num]["inputs"]["value"] == 42
    assert page.problems == []


def wait_output_image(page: Any, node_id: str, timeout_ms: int = 60000) -> list[dict]:
    page.wait_for_function(
        f"() => window.noodle.editor.outputImages('{node_id}').some(i => i.loaded)",
        timeout=timeout_ms)
    return page.evaluate(f"window.noodle.editor.outputImages('{node_id}')")


def save_node_of(workflow: dict) -> str:
    return next(nid for nid, nd in workflow["nodes"].items()
                if nd["type"] in ("SaveImage", "SavePicture"))


def test_default_workflow_runs_and_shows_its_image(page: Any, server: Any) -> None:
    save_id = save_node_of(server.default_workflow)
    seed_node = next(n["id"] for n in summary(page) if "control after run" in n["widgets"])
    page.evaluate(f"""window.noodle.editor.node('{seed_node}').widgets
        .find(w => w.name === 'control after run').value = 'randomize'""")
    before = page.evaluate("window.noodle.editor.serialize()")
    page.click("#graph")
    page.keyboard.press("Control+Enter")
    images = wait_output_image(page, save_id)
    assert "/api/view?filename=" in images[0]["src"]
    png = page.request.get(images[0]["src"])
    assert png.status == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.body())) as img:
        ran = json.loads(img.text["workflow"])
    assert ran["nodes"].keys() == before["nodes"].keys()
    seed_ran = ran["nodes"][seed_node]["inputs"]["seed"]
    assert seed_ran == before["nodes"][seed_node]["inputs"]["seed"]
    after = page.evaluate("window.noodle.editor.serialize()")
    assert after["nodes"][seed_node]["inputs"]["seed"] != seed_ran  # randomized after the run
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('Done')")
    assert page.problems == []


def test_dropping_a_saved_png_brings_its_workflow_back(page: Any, server: Any) -> None:
    ed = "window.noodle.editor"
    original = page.evaluate(f"{ed}.serialize()")
    page.keyboard.press("Control+Enter")
    src = wait_output_image(page, save_node_of(original))[0]["src"]
    new_graph(page)
    page.evaluate("""async (src) => {
        const blob = await (await fetch(src)).blob();
        const dt = new DataTransfer();
        dt.items.add(new File([blob], "render.png", {type: "image/png"}));
        document.querySelector("#graph").dispatchEvent(new DragEvent("drop",
            {dataTransfer: dt, bubbles: true, cancelable: true, clientX: 600, clientY: 300}));
    }""", src)
    page.wait_for_function(f"() => {ed}.summary().length > 0")
    restored = page.evaluate(f"{ed}.serialize()")
    assert restored["nodes"].keys() == original["nodes"].keys()
    for nid, nd in original["nodes"].items():
        assert restored["nodes"][nid]["type"] == nd["type"]
        links = {k: v for k, v in nd["inputs"].items() if isinstance(v, dict)}
        assert {k: v for k, v in restored["nodes"][nid]["inputs"].items()
                if isinstance(v, dict)} == links


def test_invalid_workflow_shows_error_badges(page: Any) -> None:
    ed = "window.noodle.editor"
    bad = workflow_dict({
        "1": ("Gradient", {"size": 4000}, {"ui": {"pos": [100, 140], "size": [300, 300]}}),
        "2": ("ShowInt", {"value": link("1", "image")},
              {"ui": {"pos": [520, 140], "size": [260, 120]}})}, name="broken")
    page.evaluate("(doc) => window.noodle.loadDoc(doc, {fit: false})", bad)
    assert page.evaluate(f"{ed}.serialize()")["nodes"]["2"]["inputs"]["value"] == \
        {"from": "1", "output": "image"}  # the unconnectable link is kept as written
    page.click("#queue")
    page.wait_for_selector("#messages li")
    e1 = page.evaluate(f"{ed}.errorsOf('1')")
    e2 = page.evaluate(f"{ed}.errorsOf('2')")
    assert [(e["input"], e["code"]) for e in e1] == [("size", "value_out_of_range")]
    assert [(e["input"], e["code"]) for e in e2] == [("value", "type_mismatch")]
    assert page.locator("#messages li[data-node='1'][data-input=size]").count() == 1
    # The badge is drawn above node 1's title: sample its pixels for the error red.
    page.wait_for_timeout(150)
    x, y = page.evaluate(f"{ed}.badgePosition('1')")
    shot = page.screenshot(clip={"x": x - 2, "y": y - 2, "width": 4, "height": 4})
    with Image.open(io.BytesIO(shot)) as img:
        r, g, b = img.convert("RGB").resize((1, 1)).getpixel((0, 0))
    assert r > 200 and g < 110 and b < 140, (r, g, b)  # the badge's red, not text or node


def test_run_error_is_shown_on_the_failing_node(page: Any) -> None:
    doc = workflow_dict({
        "1": ("Number", {"value": 9}, {"ui": {"pos": [80, 100]}}),
        "2": ("Fail", {"value": link("1", "value")}, {"ui": {"pos": [420, 100]}})},
        name="fails")
    page.evaluate("(doc) => window.noodle.loadDoc(doc)", doc)
    page.keyboard.press("Control+Enter")
    page.wait_for_function("() => window.noodle.editor.errorsOf('2').length > 0")
    error = page.evaluate("window.noodle.editor.errorsOf('2')")[0]
    assert error["code"] == "RuntimeError" and "failing on purpose with 9" in error["message"]
    page.wait_for_function("() => document.querySelector('#status').textContent === 'Failed'")
    assert page.evaluate("window.noodle.editor.errorsOf('1')") == []


def name_workflow(page: Any, action: str, name: str) -> None:
    """Save as or rename from the workflow menu, and wait until the title shows the name."""
    page.click("#workflow-button")
    page.click(f"[data-action={action}]")
    page.fill(".modal-input", name)
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"() => document.querySelector('#workflow-name').textContent === {json.dumps(name)}")


def test_save_rename_open_and_download(page: Any, server: Any) -> None:
    name_workflow(page, "save-as", "my flow")
    listing = page.request.get(server.url + "/api/workflows").json()["workflows"]
    assert {"my flow", "txt2img"} <= {w["name"] for w in listing}
    name_workflow(page, "rename", "renamed")
    names = {(w["name"], w["source"])
             for w in page.request.get(server.url + "/api/workflows").json()["workflows"]}
    assert ("renamed", "user") in names and ("my flow", "user") not in names
    saved = page.request.get(server.url + "/api/workflows/renamed").json()
    assert saved["nodes"].keys() == server.default_workflow["nodes"].keys()
    new_graph(page)
    page.click("#workflow-button")
    page.click("[data-action=open]")
    page.click("[data-workflow='user:renamed']")
    page.wait_for_function("() => window.noodle.editor.summary().length > 0")
    assert page.text_content("#workflow-name") == "renamed"
    page.click("#workflow-button")
    page.wait_for_selector("#examples [data-example=txt2img]")
    with page.expect_download() as info:
        page.click("[data-action=download]")
    downloaded = json.loads(open(info.value.path(), encoding="utf-8").read())
    assert downloaded["format"] == "noodle.workflow" and downloaded["name"] == "renamed"
    assert downloaded["nodes"].keys() == saved["nodes"].keys()
    page.click("#workflow-button")
    page.click("#examples [data-example=txt2img]")
    page.wait_for_function(
        "() => document.querySelector('#workflow-name').textContent.includes('example')")


def test_dropping_a_workflow_json_opens_it(page: Any) -> None:
    doc = workflow_dict({
        "7": ("Number", {"value": 11}, {"ui": {"pos": [50, 50]}}),
        "8": ("ShowInt", {"value": link("7", "value")},
              {"ui": {"pos": [400, 50], "title": "Shown"}, "note": "kept"}),
        "9": ("FromTheFuture", {"x": link("7", "value"), "y": 2}, {"ui": {"pos": [50, 300]}})},
        name="dropped",
        ui={"groups": [{"title": "G", "bounding": [0, 0, 700, 300], "color": "#335"}]},
        extra_top=[1, 2])
    page.evaluate("""(text) => {
        const dt = new DataTransfer();
        dt.items.add(new File([text], "dropped.json", {type: "application/json"}));
        document.querySelector("#graph").dispatchEvent(new DragEvent("drop",
            {dataTransfer: dt, bubbles: true, cancelable: true, clientX: 500, clientY: 300}));
    }""", json.dumps(doc))
    page.wait_for_function("() => window.noodle.editor.summary().length === 3")
    assert "FromTheFuture" in page.text_content("#messages")
    out = page.evaluate("window.noodle.editor.serialize()")
    assert out["nodes"]["8"]["inputs"]["value"] == {"from": "7", "output": "value"}
    assert out["nodes"]["7"]["inputs"]["value"] == 11
    assert out["nodes"]["8"]["ui"]["title"] == "Shown" and out["nodes"]["8"]["note"] == "kept"
    assert out["ui"]["groups"][0]["title"] == "G" and out["extra_top"] == [1, 2]
    unknown = out["nodes"]["9"]
    assert unknown["type"] == "FromTheFuture"
    assert unknown["inputs"] == doc["nodes"]["9"]["inputs"]


def test_upload_image_into_a_load_image_node(page: Any, server: Any, tmp_path: Any) -> None:
    if "LoadImage" not in server.registry:
        pytest.skip("the node library with LoadImage did not load")
    new_graph(page)
    ed = "window.noodle.editor"
    nid = page.evaluate(f"{ed}.addNode('LoadImage', [100, 100])")
    page.wait_for_timeout(100)
    picture = tmp_path / "upload me.png"
    Image.new("RGB", (24, 16), "purple").save(picture)
    with page.expect_file_chooser() as chooser:
        page.mouse.click(*page.evaluate(f"{ed}.widgetPosition('{nid}', 'upload image…')"))
    chooser.value.set_files(str(picture))
    images = wait_output_image(page, nid, 10000)
    name = page.evaluate(f"{ed}.serialize()")["nodes"][nid]["inputs"]["image"]
    assert name.endswith(".png") and len(name) == 36
    assert (server.input_dir / name).read_bytes() == picture.read_bytes()
    assert "type=input" in images[0]["src"]
    assert page.problems == []


def test_running_node_progress_preview_and_stop(page: Any) -> None:
    doc = workflow_dict({"1": ("Gradient", {"steps": 150, "delay": 0.03, "seed": 5},
                               {"ui": {"pos": [80, 80], "size": [300, 420]}}),
                         "2": ("SavePicture", {"image": link("1", "image")},
                               {"ui": {"pos": [440, 80]}})}, name="slow")
    page.evaluate("(doc) => window.noodle.loadDoc(doc)", doc)
    page.click("#queue")
    page.wait_for_function("""() => {
        const n = window.noodle.editor.node('1');
        return n.noodle.running && n.noodle.progress?.step >= 3 && n.noodle.preview?.complete;
    }""")
    assert page.is_visible("#progress")
    width = page.evaluate("parseFloat(document.querySelector('#progress > div').style.width)")
    assert 0 < width < 100
    assert page.text_content("#status") == "Running…"
    page.click("#interrupt")
    page.wait_for_function("() => document.querySelector('#status').textContent === 'Interrupted'")
    assert page.evaluate("window.noodle.editor.node('1').noodle.running") is False
    assert page.is_hidden("#progress")
    assert page.evaluate("window.noodle.editor.outputImages('2')") == []


def rgb(hex_colour: str) -> str:
    """A #rrggbb colour as the browser reports a CSS background."""
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def test_socket_colours_and_links_come_from_served_types(page: Any) -> None:
    served = page.evaluate("fetch('/api/types').then((r) => r.json())")
    assert served["FLOAT"]["accepts"] == ["FLOAT", "INT"] and served["INT"]["accepts"] == ["INT"]
    new_graph(page)
    ed = "window.noodle.editor"
    num = page.evaluate(f"{ed}.addNode('Number', [80, 60])")
    grad = page.evaluate(f"{ed}.addNode('Gradient', [80, 260])")
    colours = page.evaluate(f"""[{ed}.node('{num}').outputs[0].color_on,
                                 {ed}.node('{grad}').outputs[0].color_on,
                                 {ed}.node('{grad}').outputs[0].color_off]""")
    assert colours == [served["INT"]["color"], served["IMAGE"]["color"], served["IMAGE"]["color"]]
    expected = {name: t["color"] for name, t in served.items()}
    assert page.evaluate(f"{ed}.canvas.default_connection_color_byType") == expected
    assert page.evaluate(f"{ed}.canvas.default_connection_color_byTypeOff") == expected
    link_colours = page.evaluate(f"{ed}.canvas.constructor.link_type_colors")
    assert all(link_colours[name] == colour for name, colour in expected.items())
    dot = page.evaluate("getComputedStyle(document.querySelector("
                        "'.palette-item[data-type=Number] .dots i')).backgroundColor")
    assert dot == rgb(served["INT"]["color"])
    # Every pair of served types links exactly when the input type's `accepts` lists the output's.
    verdicts = page.evaluate(
        f"(names) => names.map((out) => names.map((inp) => {ed}.canLink(out, inp)))", list(served))
    for out, row in zip(served, verdicts, strict=True):
        for inp, ok in zip(served, row, strict=True):
            assert ok == (out in served[inp]["accepts"]), (out, inp)
    assert page.evaluate(f"{ed}.canLink('INT', 'FLOAT')") is True
    assert page.evaluate(f"{ed}.canLink('STRING', 'INT')") is False
    wildcard = page.evaluate(f"[{ed}.canLink('*', 'IMAGE'), {ed}.canLink('IMAGE', '*')]")
    assert wildcard == [True, True]
    assert page.problems == []


def test_canvas_follows_changed_types_and_upload_flags(page: Any, server: Any) -> None:
    """Served data changed under the page: no colour, link rule or upload button may come
    from a copy kept in the front end."""
    types_ = page.evaluate("fetch('/api/types').then((r) => r.json())")
    nodes = page.evaluate("fetch('/api/nodes').then((r) => r.json())")
    types_["INT"]["color"] = "#123456"
    types_["STRING"]["accepts"] = ["STRING", "INT"]
    types_["FLOAT"]["accepts"] = ["FLOAT"]
    del types_["IMAGE"]
    for spec in nodes["SavePicture"]["inputs"]:
        if spec["name"] == "filename_prefix":
            spec["upload"] = "image"
    for spec in nodes.get("LoadImage", {}).get("inputs", []):
        spec.pop("upload", None)
    page.route("**/api/types", lambda route: route.fulfill(json=types_))
    page.route("**/api/nodes", lambda route: route.fulfill(json=nodes))
    page.reload()
    page.wait_for_selector("body[data-ready=true]", timeout=15000)
    new_graph(page)
    ed = "window.noodle.editor"
    num = page.evaluate(f"{ed}.addNode('Number', [80, 60])")
    grad = page.evaluate(f"{ed}.addNode('Gradient', [80, 260])")
    save = page.evaluate(f"{ed}.addNode('SavePicture', [480, 120])")
    assert page.evaluate(f"{ed}.node('{num}').outputs[0].color_on") == "#123456"
    assert page.evaluate(f"{ed}.canvas.constructor.link_type_colors.INT") == "#123456"
    # A type the server does not list: the neutral colour, and links only to itself.
    assert page.evaluate(f"{ed}.node('{grad}').outputs[0].color_on") == "#9aa4b2"
    assert page.evaluate(f"{ed}.canLink('IMAGE', 'IMAGE')") is True
    assert page.evaluate(f"{ed}.canLink('INT', 'FLOAT')") is False
    assert page.evaluate(f"{ed}.canLink('INT', 'STRING')") is True
    assert page.evaluate(f"{ed}.connect('{num}', 'value', '{save}', 'filename_prefix')") is True
    links = {n["id"]: n["links"] for n in summary(page)}
    assert links[save] == ["filename_prefix"]
    assert page.evaluate(f"{ed}.widgetPosition('{save}', 'upload image…')") is not None
    if "LoadImage" in nodes:
        loader = page.evaluate(f"{ed}.addNode('LoadImage', [480, 400])")
        assert page.evaluate(f"{ed}.widgetPosition('{loader}', 'upload image…')") is None
    page.wait_for_timeout(100)
    with page.expect_file_chooser():
        page.mouse.click(*page.evaluate(f"{ed}.widgetPosition('{save}', 'upload image…')"))
    assert page.problems == []
