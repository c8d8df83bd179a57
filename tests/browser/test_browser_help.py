"""Keyboard and help in headless Chromium: the shortcuts list opened with "?", panel keys that
leave text fields alone, and a node's docstring as a tooltip in the palette and search box."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser

ED = "window.noodle.editor"
TIP = "#node-tip"


def schema(page: Any, name: str) -> dict:
    return page.evaluate("async n => (await (await fetch('/api/nodes')).json())[n]", name)


def test_question_mark_lists_every_binding_and_escape_closes(page: Any) -> None:
    page.keyboard.press("?")
    dialog = page.locator("#shortcuts")
    dialog.wait_for(state="visible")
    listed = page.eval_on_selector_all("#shortcuts tr", "rows => rows.map(r => r.dataset.keys)")
    for combo in ("Ctrl+Enter", "Ctrl+S", "Ctrl+Z", "Ctrl+Shift+Z, Ctrl+Y", "Ctrl+C", "Ctrl+V",
                  "Ctrl+Shift+V", "Ctrl+B", "Ctrl+M", "Ctrl+A", "Delete, Backspace", "Q", "?"):
        assert combo in listed, combo
    row = page.locator("#shortcuts tr[data-keys='Ctrl+B']")
    assert "Bypass" in row.text_content()
    assert row.locator("kbd").all_text_contents() == ["Ctrl", "B"]
    page.keyboard.press("?")  # a second "?" opens no second list
    assert page.locator("#shortcuts").count() == 1
    page.click("#shortcuts h2")  # the focus leaves the Close button; Escape still closes
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached")
    assert page.problems == []


def test_panel_keys_do_not_fire_while_typing(page: Any) -> None:
    assert page.locator("#sidebar").is_hidden()
    page.click(".palette-filter")
    page.keyboard.type("q?Q")
    assert page.input_value(".palette-filter") == "q?Q"
    assert page.locator("#sidebar").is_hidden()
    assert page.locator("#shortcuts").count() == 0
    page.fill(".palette-filter", "")
    box = page.locator("#graph").bounding_box()
    page.mouse.click(box["x"] + box["width"] - 40, box["y"] + box["height"] - 40)
    page.keyboard.press("q")
    assert page.locator("#sidebar").is_visible()
    assert page.get_attribute("#sidebar-button", "aria-pressed") == "true"
    page.keyboard.press("q")
    assert page.locator("#sidebar").is_hidden()
    assert page.problems == []


def test_palette_entry_hover_shows_docstring(page: Any) -> None:
    doc = schema(page, "Gradient")["description"]
    assert doc.startswith("A gradient image")
    page.fill(".palette-filter", "test/")  # the test nodes' group starts folded
    page.hover(".palette-item[data-type=Gradient]")
    page.wait_for_selector(TIP, state="visible")
    assert page.text_content(f"{TIP} .node-tip-text") == doc
    assert page.get_attribute(TIP, "data-type") == "Gradient"
    tip = page.locator(TIP).bounding_box()
    item = page.locator(".palette-item[data-type=Gradient]").bounding_box()
    assert tip["x"] >= item["x"] + item["width"]  # beside the entry, not over it
    page.hover(".palette-item[data-type=AddInt]")
    page.wait_for_function("() => document.querySelector('#node-tip').dataset.type === 'AddInt'")
    assert page.text_content(f"{TIP} .node-tip-text") == "a + b."
    box = page.locator("#graph").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector(TIP, state="hidden")
    assert page.problems == []


def test_search_result_hover_and_selection_show_docstring(page: Any) -> None:
    box = page.locator("#graph").bounding_box()
    page.mouse.dblclick(box["x"] + box["width"] - 260, box["y"] + 120)
    page.wait_for_selector(".litesearchbox input")
    page.keyboard.type("Number")
    page.wait_for_selector(".litesearchbox .lite-search-item[data-type=Number]")
    page.hover(".litesearchbox .lite-search-item[data-type=Number]")
    page.wait_for_selector(TIP, state="visible")
    assert page.text_content(f"{TIP} .node-tip-text") == schema(page, "Number")["description"]
    page.keyboard.press("ArrowDown")  # the tip follows the selected result
    page.wait_for_function("""() => {
        const sel = document.querySelector('.litesearchbox .lite-search-item.selected');
        const tip = document.querySelector('#node-tip');
        return sel && !tip.hidden && tip.dataset.type === unescape(sel.dataset.type); }""")
    page.keyboard.press("Escape")
    assert page.problems == []
