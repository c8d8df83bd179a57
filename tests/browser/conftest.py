"""Real-browser fixtures: the real server on a free loopback port (in a thread) and the
system Chromium driven by Playwright.

The node registry combines the shipped node library (when it imports) with the toy canvas
nodes of tests/support, so wiring and widget tests do not depend on the diffusion nodes.
The default workflow is the shipped `workflows/txt2img.json` when it, its nodes and the
embedded model are all present; otherwise a small gradient workflow stands in for it.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.graph import validate
from graph_runtime.registry import REGISTRY, Registry
from graph_runtime.server import create_app
from graph_runtime.workflow import load_workflow
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, ServerThread
from tests.support.paths import MODELS, WORKFLOWS
from tests.support.toy_nodes import CANVAS, image_workflow, toy_registry


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if CHROMIUM.exists() or os.environ.get("NOODLE_REQUIRE_BROWSER") == "1":
        return
    skip = pytest.mark.skip(reason="no Chromium at /usr/bin/chromium")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def combined_registry() -> tuple[Registry, bool]:
    """Test nodes plus the shipped library; second value: whether the latter loaded."""
    reg = toy_registry(CANVAS)
    try:
        importlib.import_module("nodes")
        loaded = True
    except Exception:  # noqa: BLE001 - the canvas tests still run on the test nodes
        loaded = False
    for name in REGISTRY:
        if name not in reg:
            reg.add(REGISTRY[name])
    for socket in REGISTRY.socket_types.values():
        if socket.name not in reg.socket_types:
            reg.add_socket_type(socket)
    return reg, loaded


def real_default_workflow(reg: Registry) -> dict | None:
    """The shipped txt2img workflow when it can run here, else None."""
    path = WORKFLOWS / "txt2img.json"
    if not path.is_file() or not (MODELS / "noodle-tiny").exists():
        return None
    try:
        wf = load_workflow(path)
    except ValueError:
        return None
    return None if validate(wf, reg) else json.loads(path.read_text())


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("noodle-browser")
    reg, _ = combined_registry()
    shipped = root / "workflows"
    shipped.mkdir()
    default = real_default_workflow(reg)
    if default is None:
        default = image_workflow(steps=4, name="txt2img",
                                 description="Stand-in default workflow (test nodes)")
    (shipped / "txt2img.json").write_text(json.dumps(default))
    folders = Folders(output=root / "output", input=root / "input", models=MODELS,
                      user=root / "user", temp_dir=root / "temp")
    app = create_app(Executor(reg, folders=folders), workflows_dir=shipped)
    thread = ServerThread(app)
    thread.start()
    thread.default_workflow = default  # type: ignore[attr-defined]
    thread.registry = reg  # type: ignore[attr-defined]
    thread.input_dir = root / "input"  # type: ignore[attr-defined]
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API keeps an event loop running while it is open,
    which would break the asyncio-based server tests collected after the browser tests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: ServerThread) -> Iterator[Any]:
    """A fresh page (empty storage) on the canvas, ready; `page.problems` collects console
    errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1400, "height": 860})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.problems = problems
    pg.goto(server.url + "/")
    pg.wait_for_selector("body[data-ready=true]", timeout=15000)
    yield pg
    context.close()
