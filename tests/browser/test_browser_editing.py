"""Editing the canvas in headless Chromium: undo/redo, copy/paste through the clipboard (within
a page and between pages), paste keeping inputs, and the unsaved-changes marker."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.browser import ServerThread

pytestmark = pytest.mark.browser

ED = "window.noodle.editor"


def nodes(page: Any) -> dict:
    return page.evaluate(f"{ED}.serialize()")["nodes"]


def new_graph(page: Any) -> None:
    page.click("#workflow-button")
    page.click("[data-action=new]")
    assert nodes(page) == {}


def drag(page: Any, a: list[float], b: list[float]) -> None:
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, steps=4)
    page.mouse.move(*b, steps=4)
    page.mouse.up()


def title_of(page: Any, node_id: str) -> list[float]:
    """Screen position of a point on the node's title bar."""
    return page.evaluate(f"""(() => {{ const n = {ED}.node('{node_id}');
        return {ED}.graphToScreen(n.pos[0] + 30, n.pos[1] - 15); }})()""")


def wait_steps(page: Any, count: int) -> None:
    page.wait_for_function(f"() => {ED}.history.undoStack.length === {count}")


def viewport(page: Any) -> list:
    return page.evaluate(f"[[...{ED}.canvas.ds.offset], {ED}.canvas.ds.scale]")


def focus_canvas(page: Any) -> None:
    box = page.locator("#graph").bounding_box()
    page.mouse.click(box["x"] + box["width"] - 30, box["y"] + box["height"] - 30)


def test_undo_redo_add_move_link_widget_delete(page: Any) -> None:
    new_graph(page)
    states = [nodes(page)]
    num = page.evaluate(f"{ED}.addNode('Number', [80, 80])")
    wait_steps(page, 1)
    states.append(nodes(page))
    add = page.evaluate(f"{ED}.addNode('AddInt', [420, 80])")
    wait_steps(page, 2)
    states.append(nodes(page))
    page.wait_for_timeout(100)  # one frame, so widget positions are laid out
    drag(page, title_of(page, add), [title_of(page, add)[0] + 60, title_of(page, add)[1] + 90])
    wait_steps(page, 3)  # the whole drag is one step
    states.append(nodes(page))
    assert states[-1][add]["ui"]["pos"] != states[-2][add]["ui"]["pos"]
    src = page.evaluate(f"{ED}.slotPosition('{num}', 'value', false)")
    drag(page, src, page.evaluate(f"{ED}.slotPosition('{add}', 'a', true)"))
    wait_steps(page, 4)
    states.append(nodes(page))
    assert states[-1][add]["inputs"]["a"] == {"from": num, "output": "value"}
    page.mouse.click(*page.evaluate(f"{ED}.widgetPosition('{num}', 'value', 'more')"))
    wait_steps(page, 5)
    states.append(nodes(page))
    assert states[-1][num]["inputs"]["value"] != states[-2][num]["inputs"]["value"]
    page.mouse.click(*title_of(page, num))
    page.keyboard.press("Delete")
    wait_steps(page, 6)
    states.append(nodes(page))
    assert list(states[-1]) == [add] and "a" not in states[-1][add]["inputs"]
    view = viewport(page)
    for expected in reversed(states[:-1]):
        page.keyboard.press("Control+z")
        assert nodes(page) == expected
    page.keyboard.press("Control+z")  # nothing left to undo
    assert nodes(page) == states[0]
    for i, expected in enumerate(states[1:]):
        page.keyboard.press("Control+Shift+Z" if i % 2 else "Control+y")
        assert nodes(page) == expected
    assert viewport(page) == view
    # Typing in a text field keeps its own undo: the graph does not change.
    page.fill(".palette-filter", "abc")
    page.focus(".palette-filter")
    page.keyboard.press("Control+z")
    assert nodes(page) == states[-1]
    assert page.problems == []


def select_all_and_copy(page: Any) -> None:
    focus_canvas(page)
    page.keyboard.press("Control+a")
    page.keyboard.press("Control+c")


def paste_at(page: Any, graph_pos: list[float], keys: str = "Control+v") -> None:
    page.mouse.move(*page.evaluate(f"{ED}.graphToScreen({graph_pos[0]}, {graph_pos[1]})"))
    page.keyboard.press(keys)


def two_linked(page: Any) -> tuple[str, str]:
    new_graph(page)
    num = page.evaluate(f"{ED}.addNode('Number', [60, 60])")
    show = page.evaluate(f"{ED}.addNode('ShowInt', [360, 60])")
    assert page.evaluate(f"{ED}.connect('{num}', 'value', '{show}', 'value')")
    page.evaluate(f"{ED}.setWidget('{num}', 'value', 7)")
    return num, show


def test_copy_paste_in_a_page_and_into_another_page(page: Any, browser: Any,
                                                     server: ServerThread) -> None:
    num, show = two_linked(page)
    select_all_and_copy(page)
    paste_at(page, [100, 400])
    after = nodes(page)
    assert len(after) == 4
    new_num, new_show = (i for i in after if i not in (num, show))
    assert after[new_num]["type"] == "Number" and after[new_num]["inputs"]["value"] == 7
    assert after[new_show]["inputs"]["value"] == {"from": new_num, "output": "value"}
    assert [round(v) for v in after[new_num]["ui"]["pos"]] == [100, 400]
    assert after[new_show]["ui"]["pos"][0] - after[new_num]["ui"]["pos"][0] == 300
    assert page.evaluate(f"{ED}.selectedIds()") == [new_num, new_show]
    page.keyboard.press("Control+z")
    assert len(nodes(page)) == 2
    # Another page with its own storage: the fragment travels as clipboard text.
    other = browser.new_context(viewport={"width": 1400, "height": 860},
                                permissions=["clipboard-read", "clipboard-write"])
    try:
        second = other.new_page()
        problems: list[str] = []
        second.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        second.goto(server.url + "/")
        second.wait_for_selector("body[data-ready=true]", timeout=15000)
        new_graph(second)
        assert second.evaluate("localStorage.getItem('noodle.clipboard.v1')") is None
        focus_canvas(second)
        paste_at(second, [50, 50])
        pasted = nodes(second)
        assert sorted(nd["type"] for nd in pasted.values()) == ["Number", "ShowInt"]
        shown = next(nd for nd in pasted.values() if nd["type"] == "ShowInt")
        assert shown["inputs"]["value"]["from"] in pasted
        assert problems == []
    finally:
        other.close()
    assert page.problems == []


def test_paste_with_inputs_keeps_links_from_outside(page: Any) -> None:
    num, show = two_linked(page)
    page.wait_for_timeout(100)
    page.mouse.click(*title_of(page, show))
    assert page.evaluate(f"{ED}.selectedIds()") == [show]
    page.keyboard.press("Control+c")
    paste_at(page, [360, 300])
    plain = next(nd for i, nd in nodes(page).items() if i not in (num, show))
    assert plain["type"] == "ShowInt" and "value" not in plain["inputs"]
    paste_at(page, [360, 500], "Control+Shift+V")
    after = nodes(page)
    assert len(after) == 4
    kept = [nd for nd in after.values() if nd["ui"]["pos"][1] == 500]
    assert kept[0]["inputs"]["value"] == {"from": num, "output": "value"}
    assert page.problems == []


def is_dirty(page: Any) -> bool:
    return page.get_attribute("#workflow-name", "data-dirty") == "true"


def wait_dirty(page: Any, dirty: bool) -> None:
    page.wait_for_function(f"""() => document.querySelector('#workflow-name')
        .dataset.dirty === '{str(dirty).lower()}'""")


def leaving_is_stopped(page: Any) -> bool:
    return page.evaluate("""() => { const e = new Event('beforeunload', {cancelable: true});
        window.dispatchEvent(e); return e.defaultPrevented; }""")


def test_dirty_marker_appears_and_clears_on_save(page: Any) -> None:
    page.wait_for_timeout(200)
    page.evaluate(f"{ED}.history.checkpoint()")  # a loaded workflow has no unsaved change
    assert not is_dirty(page) and not page.title().startswith("•")
    assert not leaving_is_stopped(page)
    page.evaluate(f"{ED}.addNode('Number', [40, 40])")
    wait_dirty(page, True)
    assert page.title().startswith("• ")
    assert page.evaluate("getComputedStyle(document.querySelector('#workflow-name'), '::before')"
                         ".content") == '"• "'
    assert leaving_is_stopped(page)
    focus_canvas(page)
    page.keyboard.press("Control+z")  # back to the loaded state: nothing unsaved
    assert not is_dirty(page)
    page.keyboard.press("Control+y")
    assert is_dirty(page)
    page.click("#workflow-button")
    page.click("[data-action=save-as]")
    page.fill(".modal-input", "edited")
    page.keyboard.press("Enter")
    wait_dirty(page, False)
    assert page.text_content("#workflow-name") == "edited"
    assert not page.title().startswith("•") and not leaving_is_stopped(page)
    assert page.problems == []
