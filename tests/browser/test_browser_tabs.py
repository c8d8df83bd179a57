"""Workflow tabs in headless Chromium: New opens a tab, each tab keeps its own graph,
viewport, name and undo history, nodes copied in one tab paste into another, closing a tab
shows its neighbour, and after a reload every tab comes back with its undo history."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser
ED = "window.noodle.editor"


def tab_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all("#tabs .tab", "ts => ts.map(t => t.dataset.tabId)")


def active_tab(page: Any) -> str:
    return page.get_attribute("#tabs .tab.active", "data-tab-id")


def switch(page: Any, tab: str) -> None:
    page.click(f"#tabs .tab[data-tab-id='{tab}'] .tab-label")
    page.wait_for_function(
        "(t) => document.querySelector('#tabs .tab.active').dataset.tabId === t", arg=tab)


def types(page: Any) -> list[str]:
    return sorted(n["type"] for n in page.evaluate(f"{ED}.summary()"))


def focus_canvas(page: Any) -> None:
    """Keys to the canvas, the mouse over it (where a paste lands), nothing clicked."""
    page.locator("#graph").focus()
    box = page.locator("#graph").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] - 40)


def test_tabs_keep_graph_viewport_and_undo_and_paste_between_them(page: Any, server: Any) -> None:
    (first,) = tab_ids(page)
    default = types(page)
    assert default and page.inner_text("#tabs .tab.active .tab-label") == "txt2img"
    page.evaluate(f"{ED}.canvas.ds.offset = [-40, 25]; {ED}.canvas.ds.scale = 0.8")
    page.click("#workflow-button")
    page.click("[data-action=new]")
    page.wait_for_function("() => document.querySelectorAll('#tabs .tab').length === 2")
    second = active_tab(page)
    assert second != first and types(page) == []
    num = page.evaluate(f"{ED}.addNode('Number', [100, 100])")
    page.wait_for_function(f"() => {ED}.history.undoStack.length === 1")
    page.evaluate(f"{ED}.setWidget('{num}', 'value', 42)")
    page.wait_for_function(f"() => {ED}.history.undoStack.length === 2")
    page.evaluate(f"{ED}.canvas.ds.offset = [300, 200]; {ED}.canvas.ds.scale = 1.25")
    # Copy here, paste in the first tab.
    focus_canvas(page)
    page.evaluate(f"{ED}.canvas.selectItems([{ED}.node('{num}')])")
    page.keyboard.press("Control+c")
    switch(page, first)
    assert types(page) == default
    assert page.evaluate(f"[[...{ED}.canvas.ds.offset], {ED}.canvas.ds.scale]") == [[-40, 25], 0.8]
    assert page.evaluate(f"{ED}.history.undoStack.length") == 0
    focus_canvas(page)
    page.keyboard.press("Control+v")
    page.wait_for_function(f"() => {ED}.summary().length === {len(default) + 1}")
    pasted = [n for n in page.evaluate(f"{ED}.summary()") if n["type"] == "Number"]
    assert len(pasted) == 1 and pasted[0]["widgets"]["value"] == 42
    page.wait_for_function(f"() => {ED}.history.undoStack.length === 1")
    assert page.get_attribute("#tabs .tab.active", "class").split().count("dirty") == 1
    # The second tab kept its own graph, viewport and two undo steps.
    switch(page, second)
    assert types(page) == ["Number"]
    view = page.evaluate(f"[[...{ED}.canvas.ds.offset], {ED}.canvas.ds.scale]")
    assert view == [[300, 200], 1.25]
    assert page.evaluate(f"{ED}.history.undoStack.length") == 2
    # Reload: both tabs come back, the second shown, each with its undo history.
    page.wait_for_function("""() => JSON.parse(localStorage.getItem('noodle.tabs.v1')).tabs
        .every(t => (t.undo || []).length > 0)""")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert tab_ids(page) == [first, second] and active_tab(page) == second
    assert types(page) == ["Number"]
    page.keyboard.press("Control+z")
    page.wait_for_function(f"() => {ED}.summary()[0].widgets.value !== 42")
    page.keyboard.press("Control+z")
    page.wait_for_function(f"() => {ED}.summary().length === 0")
    switch(page, first)
    assert types(page) == sorted([*default, "Number"])
    assert page.get_attribute("#tabs .tab.active", "class").split().count("dirty") == 1
    focus_canvas(page)
    page.keyboard.press("Control+z")
    page.wait_for_function(f"() => {ED}.summary().length === {len(default)}")
    assert types(page) == default
    # Closing the shown tab shows its neighbour; the last tab is emptied, not removed.
    page.once("dialog", lambda d: d.accept())
    page.click(f"#tabs .tab[data-tab-id='{first}'] .tab-close")
    page.wait_for_function("() => document.querySelectorAll('#tabs .tab').length === 1")
    assert active_tab(page) == second
    page.click(f"#tabs .tab[data-tab-id='{second}'] .tab-close")
    assert tab_ids(page) == [second] and types(page) == []
    page.click("#tab-new")
    assert len(tab_ids(page)) == 2
    assert page.problems == []
