"""Real-browser fixtures: the real server on a free loopback port (in a thread) and the
system Chromium driven by Playwright.

The node registry combines the shipped node library (when it imports) with the small test
library from tests/server, so wiring and widget tests do not depend on the diffusion nodes.
The default workflow is the shipped `workflows/txt2img.json` when it, its nodes and the
embedded model are all present; otherwise a small gradient workflow stands in for it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.graph import validate
from graph_runtime.registry import REGISTRY, Registry
from graph_runtime.server import create_app
from graph_runtime.workflow import load_workflow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from toy_nodes import image_workflow, make_registry  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if CHROMIUM.exists() or os.environ.get("NOODLE_REQUIRE_BROWSER") == "1":
        return
    skip = pytest.mark.skip(reason="no Chromium at /usr/bin/chromium")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def combined_registry() -> tuple[Registry, bool]:
    """Test nodes plus the shipped library; second value: whether the latter loaded."""
    reg = make_registry()
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
    path = REPO / "workflows" / "txt2img.json"
    if not path.is_file() or not (REPO / "models" / "noodle-tiny").exists():
        return None
    try:
        wf = load_workflow(path)
    except ValueError:
        return None
    return None if validate(wf, reg) else json.loads(path.read_text())


class ServerThread:
    """The aiohttp app on 127.0.0.1:<free port>, run by its own event loop in a thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the server did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("noodle-browser")
    reg, _ = combined_registry()
    shipped = root / "workflows"
    shipped.mkdir()
    default = real_default_workflow(reg)
    if default is None:
        default = image_workflow(steps=4)
        default["name"] = "txt2img"
        default["description"] = "Stand-in default workflow (test nodes)"
    (shipped / "txt2img.json").write_text(json.dumps(default))
    folders = Folders(output=root / "output", input=root / "input", models=REPO / "models",
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
