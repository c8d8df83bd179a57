"""The queue and history sidebar in headless Chromium: live queue with progress and cancel,
the history read back after a reload and after a server restart, "Load workflow", and the
image viewer opened from a thumbnail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.server import create_app
from tests.support.browser import ServerThread
from tests.support.paths import MODELS
from tests.support.toy_nodes import CANVAS, image_workflow, toy_registry
from tests.support.workflows import link, workflow_dict

pytestmark = pytest.mark.browser

ED = "window.noodle.editor"
# About 1.6 s: long enough to act on the queue while it runs.
SLOW = {"steps": 4, "delay": 0.4}


def load(page: Any, doc: dict) -> None:
    page.evaluate("doc => window.noodle.loadDoc(doc)", doc)


def open_sidebar(page: Any) -> None:
    if page.locator("#sidebar").is_hidden():
        page.click("#sidebar-button")
    page.wait_for_selector("#sidebar", state="visible")


def queue(page: Any) -> tuple[str, dict]:
    """Click Queue; the prompt id and the workflow as it was sent."""
    sent = page.evaluate(f"{ED}.serialize()")
    with page.expect_response("**/api/prompt") as response:
        page.click("#queue")
    return response.value.json()["prompt_id"], sent


def set_widget(page: Any, node: str, name: str, value: Any) -> None:
    assert page.evaluate(f"([n, w, v]) => {ED}.setWidget(n, w, v)", [node, name, value])


def entry(pid: str, status: str = "") -> str:
    return f".history-entry[data-prompt='{pid}']" + (f"[data-status={status}]" if status else "")


def wait_thumbnail(page: Any, pid: str) -> None:
    page.wait_for_function("""sel => {
        const img = document.querySelector(sel + ' .history-thumb img');
        return img && img.complete && img.naturalWidth > 0; }""", arg=entry(pid, "success"),
        timeout=20000)


def test_cancel_pending_reload_and_load_workflow(page: Any, server: ServerThread) -> None:
    load(page, image_workflow(seed=5, **SLOW))
    open_sidebar(page)
    first, sent = queue(page)
    set_widget(page, "1", "colour", "blue")
    second, _ = queue(page)
    running = f".queue-item.running[data-prompt='{first}']"
    page.wait_for_selector(running)
    page.wait_for_selector(f".queue-item.pending[data-prompt='{second}']")
    page.wait_for_function("sel => Number(document.querySelector(sel)?.dataset.progress) > 0",
                           arg=running)
    page.click(f".queue-item.pending[data-prompt='{second}'] .queue-cancel")
    page.wait_for_selector(f".queue-item[data-prompt='{second}']", state="detached")
    assert page.locator(running).count() == 1  # cancelling the second left the first running
    wait_thumbnail(page, first)

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    open_sidebar(page)
    wait_thumbnail(page, first)
    assert page.locator(entry(second)).count() == 0
    history = page.request.get(server.url + "/api/history?limit=50").json()
    assert second not in [e["prompt_id"] for e in history]
    status = page.text_content(entry(first) + " .history-status")
    assert status == "Done"
    assert page.locator(f"{entry(first)} .history-thumb").count() == 1

    # The canvas changes, then "Load workflow" brings back exactly what ran.
    set_widget(page, "1", "size", 48)
    page.evaluate(f"{ED}.addNode('Number', [40, 500])")
    page.wait_for_function(f"() => {ED}.history.undoStack.length >= 1")
    changed = page.evaluate(f"{ED}.serialize()")["nodes"]
    assert changed != sent["nodes"]
    page.click(entry(first) + " .history-load")
    assert page.evaluate(f"{ED}.serialize()")["nodes"] == sent["nodes"]
    assert page.get_attribute("#workflow-name", "data-dirty") == "true"
    page.evaluate(f"{ED}.history.undo()")  # one undo brings back the graph it replaced
    assert page.evaluate(f"{ED}.serialize()")["nodes"] == changed
    assert page.problems == []


def test_clear_pending_then_stop_the_running_prompt(page: Any) -> None:
    load(page, image_workflow(seed=11, steps=20, delay=0.3))
    open_sidebar(page)
    pid, _ = queue(page)
    waiting = [queue(page)[0] for _ in range(2)]
    running = f".queue-item.running[data-prompt='{pid}']"
    page.wait_for_function("sel => Number(document.querySelector(sel)?.dataset.progress) > 0",
                           arg=running)
    assert page.locator(".queue-item.pending").count() == 2
    page.click("#clear-pending")
    page.wait_for_selector(".queue-item.pending", state="detached")
    assert page.locator(running).count() == 1  # the running prompt goes on
    assert page.is_disabled("#clear-pending")
    page.click(f"{running} .queue-cancel")
    page.wait_for_selector(entry(pid, "interrupted"), timeout=15000)
    assert page.text_content(entry(pid) + " .history-status") == "Stopped"
    assert page.locator(f".queue-item[data-prompt='{pid}']").count() == 0
    assert all(page.locator(entry(w)).count() == 0 for w in waiting)
    assert page.problems == []


def post(page: Any, server: ServerThread, workflow: dict) -> str:
    resp = page.request.post(server.url + "/api/prompt", data=json.dumps({"workflow": workflow}),
                             headers={"Content-Type": "application/json"})
    assert resp.ok, resp.text()
    return resp.json()["prompt_id"]


def wait_idle(page: Any, server: ServerThread) -> None:
    page.wait_for_function("""async () => {
        const q = await (await fetch('/api/queue')).json();
        return q.running.length === 0 && q.pending.length === 0; }""", polling=100)


def shown(page: Any) -> list[str]:
    return page.eval_on_selector_all(".history-entry", "els => els.map(e => e.dataset.prompt)")


def test_failed_run_shows_its_error_and_older_pages_load(page: Any, server: ServerThread) -> None:
    bad = post(page, server, workflow_dict({"1": ("Number", {"value": 4}),
                                            "2": ("Fail", {"value": link("1", "value")})}))
    ids = [post(page, server, workflow_dict({"1": ("Number", {"value": i}),
                                             "2": ("ShowInt", {"value": link("1", "value")})}))
           for i in range(24)]
    wait_idle(page, server)
    open_sidebar(page)
    page.wait_for_selector(entry(ids[-1], "success"))
    first_page = shown(page)
    assert first_page[:20] == ids[::-1][:20]  # newest first, one page
    page.click("#history-more")
    page.wait_for_function("n => document.querySelectorAll('.history-entry').length > n",
                           arg=len(first_page))
    assert shown(page)[:25] == [*ids[::-1], bad]
    failed = page.locator(entry(bad, "error"))
    assert failed.locator(".history-status").text_content() == "Failed"
    assert "failing on purpose with 4" in failed.locator(".history-error").text_content()
    assert failed.locator(".history-thumb").count() == 0
    assert page.problems == []


def test_viewer_steps_across_entries_and_downloads(page: Any) -> None:
    open_sidebar(page)
    load(page, image_workflow(seed=1, steps=1))
    older, _ = queue(page)
    set_widget(page, "1", "colour", "green")
    newer, _ = queue(page)
    wait_thumbnail(page, older)
    wait_thumbnail(page, newer)
    src = {pid: page.get_attribute(f"{entry(pid)} .history-thumb img", "src")
           for pid in (older, newer)}
    assert src[older] != src[newer]
    page.click(f"{entry(newer)} .history-thumb")
    viewer = page.locator("#viewer")
    viewer.wait_for(state="visible")
    assert page.get_attribute("#viewer .viewer-image", "src") == src[newer]
    first = int(page.get_attribute("#viewer", "data-index"))
    page.keyboard.press("ArrowRight")  # the next image is the older entry's (newest first)
    assert page.get_attribute("#viewer .viewer-image", "src") == src[older]
    assert page.get_attribute("#viewer", "data-index") == str(first + 1)
    assert page.text_content(".viewer-counter").startswith(f"{first + 2} / ")
    page.keyboard.press("ArrowLeft")
    assert page.get_attribute("#viewer .viewer-image", "src") == src[newer]
    page.wait_for_function("() => document.querySelector('#viewer .viewer-image').naturalWidth > 0")
    with page.expect_download() as download:
        page.click(".viewer-download")
    name = page.get_attribute(f"{entry(newer)} .history-thumb", "title")
    assert download.value.suggested_filename == name
    page.keyboard.press("Escape")
    viewer.wait_for(state="hidden")
    assert page.evaluate(f"{ED}.graph._nodes.length") == 2  # the arrows never reached the canvas
    assert page.problems == []


@pytest.fixture
def state_folders(tmp_path: Path) -> Iterator[tuple[Folders, Path]]:
    shipped = tmp_path / "workflows"
    shipped.mkdir()
    (shipped / "txt2img.json").write_text(json.dumps(image_workflow(name="txt2img")))
    folders = Folders(output=tmp_path / "output", input=tmp_path / "input", models=MODELS,
                      user=tmp_path / "user", temp_dir=tmp_path / "temp")
    yield folders, shipped


def serve(folders: Folders, shipped: Path) -> ServerThread:
    app = create_app(Executor(toy_registry(CANVAS), folders=folders), workflows_dir=shipped)
    thread = ServerThread(app)
    thread.start()
    return thread


def open_page(browser: Any, url: str) -> tuple[Any, Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 860})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.problems = problems
    pg.goto(url + "/")
    pg.wait_for_selector("body[data-ready=true]", timeout=15000)
    return context, pg


def test_history_survives_a_server_restart(browser: Any,
                                           state_folders: tuple[Folders, Path]) -> None:
    folders, shipped = state_folders
    server = serve(folders, shipped)
    try:
        context, pg = open_page(browser, server.url)
        open_sidebar(pg)
        pid, sent = queue(pg)
        wait_thumbnail(pg, pid)
        assert pg.problems == []
        context.close()
    finally:
        server.stop()
    server = serve(folders, shipped)  # a new process would read the same state file
    try:
        context, pg = open_page(browser, server.url)
        open_sidebar(pg)
        wait_thumbnail(pg, pid)
        pg.evaluate(f"{ED}.clear()")
        pg.click(entry(pid) + " .history-load")
        assert pg.evaluate(f"{ED}.serialize()")["nodes"] == sent["nodes"]
        assert pg.problems == []
        context.close()
    finally:
        server.stop()
