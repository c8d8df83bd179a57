"""Bypass (Ctrl+B) and mute (Ctrl+M) on the canvas: the run skips the node, the change is one
undo step, and saving then opening the workflow keeps it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.workflows import link, workflow_dict

pytestmark = pytest.mark.browser

ED = "window.noodle.editor"


def chain() -> dict:
    return workflow_dict({
        "1": ("Number", {"value": 5}, {"ui": {"pos": [60, 100]}}),
        "2": ("AddInt", {"a": link("1", "value"), "b": 10}, {"ui": {"pos": [380, 100]}}),
        "3": ("ShowInt", {"value": link("2", "value")}, {"ui": {"pos": [700, 100]}}),
    }, name="bypass chain")


def select(page: Any, node_id: str) -> None:
    page.wait_for_timeout(100)  # one frame, so the node is laid out
    x, y = page.evaluate(f"""(() => {{ const n = {ED}.node('{node_id}');
        return {ED}.graphToScreen(n.pos[0] + 30, n.pos[1] - 15); }})()""")
    page.mouse.click(x, y)
    assert page.evaluate(f"{ED}.selectedIds()") == [node_id]


def run_and_read(page: Any, node_id: str, before: Any) -> list[str]:
    """Queue the workflow and wait for `node_id` to show texts other than `before`."""
    page.evaluate(f"{ED}.node('{node_id}').noodle.texts = []")
    page.keyboard.press("Control+Enter")
    page.wait_for_function(f"() => {ED}.node('{node_id}').noodle.texts.length > 0")
    texts = page.evaluate(f"{ED}.node('{node_id}').noodle.texts")
    assert texts != before
    return texts


def node_doc(page: Any, node_id: str) -> dict:
    return page.evaluate(f"{ED}.serialize()")["nodes"][node_id]


def undo_steps(page: Any) -> int:
    return page.evaluate(f"{ED}.history.undoStack.length")


def test_bypass_runs_without_the_node_undoes_and_survives_save(page: Any) -> None:
    page.evaluate("(doc) => window.noodle.loadDoc(doc)", chain())
    assert run_and_read(page, "3", None) == ["15"]
    select(page, "2")
    steps = undo_steps(page)
    page.keyboard.press("Control+b")
    assert node_doc(page, "2")["mode"] == "bypass"
    assert page.evaluate(f"{ED}.node('2').mode") == 4  # litegraph's BYPASS
    page.wait_for_function(f"() => {ED}.history.undoStack.length === {steps + 1}")
    assert run_and_read(page, "3", ["15"]) == ["5"]  # as if AddInt were not there
    page.keyboard.press("Control+z")
    page.wait_for_function(f"() => !('mode' in {ED}.serialize().nodes['2'])")
    page.keyboard.press("Control+Shift+z")
    page.wait_for_function(f"() => {ED}.serialize().nodes['2'].mode === 'bypass'")

    page.click("#workflow-button")
    page.click("[data-action=save-as]")
    page.fill(".modal-input", "bypassed")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#workflow-name').textContent === 'bypassed'")
    saved = page.request.get(page.url.rstrip("/") + "/api/workflows/bypassed").json()
    assert saved["nodes"]["2"]["mode"] == "bypass" and "mode" not in saved["nodes"]["3"]
    page.click("#workflow-button")
    page.click("[data-action=new]")
    page.click("#workflow-button")
    page.click("[data-action=open]")
    page.click("[data-workflow='user:bypassed']")
    page.wait_for_function(f"() => {ED}.summary().length === 3")
    assert page.evaluate(f"{ED}.node('2').mode") == 4
    assert node_doc(page, "2")["mode"] == "bypass"
    assert page.problems == []


def test_mute_skips_what_only_it_feeds_and_toggles_back(page: Any) -> None:
    doc = chain()
    doc["nodes"]["4"] = {"type": "ShowInt", "inputs": {"value": link("1", "value")},
                         "ui": {"pos": [380, 320]}}
    page.evaluate("(doc) => window.noodle.loadDoc(doc)", doc)
    select(page, "2")
    plain = page.evaluate(f"{ED}.node('2').bgcolor")
    page.keyboard.press("Control+m")
    assert node_doc(page, "2")["mode"] == "mute"
    assert page.evaluate(f"{ED}.node('2').mode") == 2  # litegraph's NEVER
    tinted = page.evaluate(f"{ED}.node('2').bgcolor")
    assert run_and_read(page, "4", None) == ["5"]
    assert page.evaluate(f"{ED}.node('3').noodle.texts") == []  # fed only by the muted node
    page.keyboard.press("Control+b")  # another mode replaces it
    assert node_doc(page, "2")["mode"] == "bypass"
    assert page.evaluate(f"{ED}.node('2').bgcolor") != tinted
    page.keyboard.press("Control+b")
    assert "mode" not in node_doc(page, "2")
    assert page.evaluate(f"{ED}.node('2').mode") == 0
    assert page.evaluate(f"{ED}.node('2').bgcolor") == plain
    assert node_doc(page, "2")["inputs"] == doc["nodes"]["2"]["inputs"]
    assert page.problems == []
