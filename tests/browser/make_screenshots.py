"""Regenerate the canvas screenshots in docs/ (not a test; run it by hand):

    .venv/bin/python -m tests.browser.make_screenshots [--out docs]

Starts the real server with the shipped node library, workflows and embedded model on a
free loopback port, opens the canvas in the system Chromium and captures: the default
workflow after a run (docs/canvas.png), the same run half-way with the running node, its
progress and step preview (docs/canvas-running.png), validation errors shown as badges
(docs/canvas-errors.png), the queue and history sidebar with a gallery of runs while another
runs (docs/canvas-history.png), a history image in the viewer (docs/canvas-viewer.png),
the models browser beside a loader dropped from it (docs/canvas-models.png) and a bypassed
node (docs/canvas-bypass.png). `--only models` takes the last two alone (no runs).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from graph_runtime.server import create_app
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, ServerThread
from tests.support.paths import REPO, WORKFLOWS

SIZE = {"width": 1600, "height": 900}
RUN_SHOTS = ("canvas.png", "canvas-running.png", "canvas-errors.png", "canvas-history.png",
             "canvas-viewer.png")
MODEL_SHOTS = ("canvas-models.png", "canvas-bypass.png")


def history_shots(page: Any, out: Path) -> None:
    """Four more runs of the default workflow (other seeds, fewer steps to keep it short),
    shot while the last runs; then the newest image in the viewer."""
    page.evaluate("() => window.noodle.openWorkflow({name: 'txt2img', source: 'shipped'})")
    page.keyboard.press("q")
    page.wait_for_selector("#sidebar", state="visible")
    for seed in (1, 2, 3, 4):
        page.evaluate("""seed => {
            const ed = window.noodle.editor;
            const of = (type) => String(ed.graph._nodes.find(n => n.type === type).id);
            ed.setWidget(of('RandomLatents'), 'seed', seed);
            ed.setWidget(of('Denoise'), 'steps', 10);
        }""", seed)
        page.click("#queue")
    page.wait_for_function("""() => document.querySelectorAll(
        '.history-entry[data-status=success] .history-thumb img').length >= 4
        && Number(document.querySelector('.queue-item.running')?.dataset.progress) > 0.4""",
        timeout=300000)
    page.wait_for_timeout(300)
    page.screenshot(path=str(out / "canvas-history.png"))
    page.wait_for_function("() => !document.querySelector('.queue-item')", timeout=300000)
    page.wait_for_timeout(300)
    page.click(".history-thumb")
    page.wait_for_function("() => document.querySelector('#viewer .viewer-image').naturalWidth > 0")
    page.screenshot(path=str(out / "canvas-viewer.png"))


def models_shots(page: Any, out: Path) -> None:
    """The models browser open, with a checkpoint loader added from it; then the default
    workflow with its negative prompt bypassed (Ctrl+B)."""
    page.evaluate("() => window.noodle.openWorkflow({name: 'txt2img', source: 'shipped'})")
    page.wait_for_function("() => window.noodle.editor.summary().length > 0")
    page.keyboard.press("m")
    page.wait_for_selector(".model-item[data-name='noodle-tiny']")
    page.evaluate("""() => { // as a drop below the Load Pipeline node would place it
        const { editor, models } = window.noodle;
        editor.fitView();
        const first = editor.graph._nodes.find(n => n.type === 'LoadPipeline');
        models.use(models.models.find(m => m.name === 'noodle-tiny-ddpm'),
                   [first.pos[0], first.pos[1] + first.size[1] + 80]);
    }""")
    page.wait_for_timeout(300)
    page.screenshot(path=str(out / "canvas-models.png"))
    page.evaluate("() => window.noodle.editor.history.undo()")
    page.keyboard.press("m")
    page.evaluate("""() => {
        const ed = window.noodle.editor;
        ed.fitView();
        const negative = ed.graph._nodes.find(n => n.title === 'Negative prompt')
            ?? ed.graph._nodes.filter(n => n.type === 'TextToConditioning').at(-1);
        ed.canvas.selectItems([negative]);
    }""")
    page.locator("#graph").focus()
    page.keyboard.press("Control+b")
    page.wait_for_timeout(300)
    page.screenshot(path=str(out / "canvas-bypass.png"))


def run_shots(page: Any, out: Path) -> None:
    """The default workflow running, done, with errors; then the history shots."""
    page.keyboard.press("Control+Enter")
    page.wait_for_function("""() => window.noodle.editor.graph._nodes.some(
        n => n.noodle?.progress && n.noodle.progress.step >= n.noodle.progress.total / 2
             && n.noodle.preview?.complete)""", timeout=120000)
    page.screenshot(path=str(out / "canvas-running.png"))
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.startsWith('Done')",
        timeout=300000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(out / "canvas.png"))
    page.evaluate("""() => {
        const ed = window.noodle.editor;
        const denoise = ed.graph._nodes.find(n => n.type === 'Denoise');
        denoise.widgets.find(w => w.name === 'steps').value = 0;
        denoise.disconnectInput(denoise.findInputSlot('latents'));
    }""")
    page.click("#queue")
    page.wait_for_selector("#messages li")
    page.wait_for_timeout(300)
    page.screenshot(path=str(out / "canvas-errors.png"))
    history_shots(page, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs"))
    parser.add_argument("--only", choices=("runs", "models"), default=None,
                        help="take one set of screenshots (default: both)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    importlib.import_module("nodes")
    root = Path(tempfile.mkdtemp(prefix="noodle-shots-"))
    folders = Folders.from_env(output=root / "output", input=root / "input",
                               temp=root / "temp", user=root / "user")
    app = create_app(Executor(REGISTRY, folders=folders), workflows_dir=WORKFLOWS)
    server = ServerThread(app)
    server.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=SIZE)
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-ready=true]")
            page.wait_for_timeout(300)
            if args.only in (None, "runs"):
                run_shots(page, out)
            if args.only in (None, "models"):
                models_shots(page, out)
            browser.close()
    finally:
        server.stop()
    shots = {None: RUN_SHOTS + MODEL_SHOTS, "runs": RUN_SHOTS, "models": MODEL_SHOTS}
    for name in shots[args.only]:
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
