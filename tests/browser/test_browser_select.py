"""Selecting and arranging nodes in headless Chromium: a Ctrl+drag rubber band selects the
nodes inside it, Alt+L / Alt+T align edges, Alt+H / Alt+V spread nodes evenly, the canvas
menu does the same, Ctrl+G puts a group around the selection, Delete removes it, and the
group and positions come back after a reload (each change one undo step)."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser
ED = "window.noodle.editor"


def new_graph(page: Any) -> None:
    page.click("#workflow-button")
    page.click("[data-action=new]")
    assert page.evaluate(f"{ED}.summary()") == []


def positions(page: Any) -> dict[str, list[float]]:
    return {nid: nd["ui"]["pos"] for nid, nd in page.evaluate(f"{ED}.serialize()")["nodes"].items()}


def three_nodes(page: Any) -> list[str]:
    ids = [page.evaluate(f"{ED}.addNode('Number', {pos})")
           for pos in ([120, 140], [420, 260], [260, 520])]
    page.evaluate(f"{ED}.canvas.deselectAll()")
    page.wait_for_function(f"() => {ED}.history.undoStack.length >= 3")
    return ids


def rubber_band(page: Any, a: tuple[float, float], b: tuple[float, float]) -> None:
    """Ctrl+drag between two points given in graph coordinates."""
    sa = page.evaluate(f"{ED}.graphToScreen({a[0]}, {a[1]})")
    sb = page.evaluate(f"{ED}.graphToScreen({b[0]}, {b[1]})")
    page.keyboard.down("Control")
    page.mouse.move(*sa)
    page.mouse.down()
    page.mouse.move((sa[0] + sb[0]) / 2, (sa[1] + sb[1]) / 2, steps=5)
    page.mouse.move(*sb, steps=5)
    page.mouse.up()
    page.keyboard.up("Control")


def test_rubber_band_align_spread_group_delete_and_reload(page: Any) -> None:
    new_graph(page)
    page.evaluate(f"{ED}.canvas.ds.offset = [0, 0]; {ED}.canvas.ds.scale = 1")
    ids = three_nodes(page)
    rubber_band(page, (60, 60), (700, 700))
    assert sorted(page.evaluate(f"{ED}.selectedIds()")) == sorted(ids)
    steps = page.evaluate(f"{ED}.history.undoStack.length")
    page.keyboard.press("Alt+l")
    pos = positions(page)
    assert {p[0] for p in pos.values()} == {120}
    assert page.evaluate(f"{ED}.history.undoStack.length") == steps + 1
    page.keyboard.press("Alt+v")
    pos = positions(page)
    heights = page.evaluate(
        f"Object.fromEntries({ED}.graph._nodes.map(n => [String(n.id), n.size[1]]))")
    order = sorted(ids, key=lambda i: pos[i][1])
    gaps = [pos[b][1] - (pos[a][1] + heights[a]) for a, b in zip(order, order[1:], strict=False)]
    assert abs(gaps[0] - gaps[1]) < 0.2 and pos[order[0]][1] == 140
    # The canvas menu aligns too: right-click the background, pick the action.
    corner = page.evaluate(f"{ED}.graphToScreen(900, 100)")
    page.mouse.click(*corner, button="right")
    page.click(".litecontextmenu .litemenu-entry:has-text('Align top edges')")
    assert {p[1] for p in positions(page).values()} == {140}
    page.keyboard.press("Alt+h")
    xs = sorted(p[0] for p in positions(page).values())
    assert xs[0] == 120 and xs[1] > xs[0] and xs[2] > xs[1]
    page.keyboard.press("Control+g")
    groups = page.evaluate(f"{ED}.serialize()")["ui"]["groups"]
    assert len(groups) == 1
    x, y, w, h = groups[0]["bounding"]
    for nid, (nx, ny) in positions(page).items():
        size = page.evaluate(f"[...{ED}.node('{nid}').size]")
        assert x < nx and y < ny - 30 and nx + size[0] < x + w and ny + size[1] < y + h
    # Delete removes the selected nodes; one undo brings them back.
    page.evaluate(f"{ED}.canvas.selectItems([{ED}.node('{ids[1]}')])")
    page.locator("#graph").focus()
    page.keyboard.press("Delete")
    page.wait_for_function(f"() => {ED}.summary().length === 2")
    saved = page.evaluate(f"{ED}.serialize()")
    page.wait_for_function("""(n) => JSON.parse(localStorage.getItem('noodle.tabs.v1')).tabs
        .some(t => Object.keys(t.doc.nodes).length === n && t.doc.ui.groups.length === 1)""", arg=2)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    restored = page.evaluate(f"{ED}.serialize()")
    assert restored["nodes"] == saved["nodes"]
    assert restored["ui"]["groups"] == saved["ui"]["groups"]
    page.keyboard.press("Control+z")
    page.wait_for_function(f"() => {ED}.summary().length === 3")
    assert page.problems == []
