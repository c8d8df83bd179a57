"""`noodle serve`: load the node library by name, build the app, run it.

Folders default to the current directory (`output/`, `input/`, `temp/`, `user/`), the
shipped workflows and models to the ones next to the package. Binding to anything but a
loopback address has to be asked for explicitly, and a warning says what that exposes.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from graph_runtime.cache import OutputCache
from graph_runtime.executor import Executor
from graph_runtime.nodes import REGISTRY
from graph_runtime.server.app import REPO_ROOT, create_app
from graph_runtime.server.security import is_loopback_bind

log = logging.getLogger("noodle.server")


def serve(host: str = "127.0.0.1", port: int = 8188, nodes_module: str | None = None,
          output_dir: Path | str = "output", input_dir: Path | str | None = None,
          temp_dir: Path | str | None = None, user_dir: Path | str = "user",
          workflows_dir: Path | str | None = None, models_dir: Path | str | None = None,
          print_url: bool = True) -> None:
    """Run the server until interrupted (Ctrl+C).

    The input and temp folders come from `NOODLE_INPUT_DIR` / `NOODLE_TEMP_DIR` when not
    given, and are written back to them, so nodes that read uploads (LoadImage) or write
    previews look in the same folders the server serves and fills."""
    input_dir = Path(input_dir or os.environ.get("NOODLE_INPUT_DIR") or "input").resolve()
    temp_dir = Path(temp_dir or os.environ.get("NOODLE_TEMP_DIR") or "temp").resolve()
    os.environ["NOODLE_INPUT_DIR"] = str(input_dir)
    os.environ["NOODLE_TEMP_DIR"] = str(temp_dir)
    module = nodes_module or os.environ.get("NOODLE_NODES") or "nodes"
    importlib.import_module(module)
    if workflows_dir is None:
        workflows_dir = REPO_ROOT / "workflows"
    if models_dir is not None:  # the loaders read it from the environment
        os.environ["NOODLE_MODELS_DIR"] = str(Path(models_dir).resolve())
    else:
        models_dir = os.environ.get("NOODLE_MODELS_DIR") or "models"
    if not is_loopback_bind(host):
        log.warning("listening on %s: anyone who can reach this address can run workflows "
                    "and read the output folder", host)
    app = create_app(REGISTRY, Executor(REGISTRY, OutputCache()), output_dir=output_dir,
                     input_dir=input_dir, temp_dir=temp_dir, user_dir=user_dir,
                     workflows_dir=workflows_dir, models_dir=models_dir, bind_host=host)
    shown = f"[{host}]" if ":" in host else host
    if print_url:
        print(f"Noodle canvas on http://{shown}:{port}/ ({len(REGISTRY)} node types)",
              file=sys.stderr, flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
