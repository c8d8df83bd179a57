"""`noodle serve`: build the app around an executor and run it.

The executor arrives ready: its registry filled by the node library the caller imported,
its cache budgeted, its folders chosen. The shipped workflows default to the ones next to
the package. Binding to anything but a loopback address has to be asked for explicitly,
and a warning says what that exposes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from aiohttp import web

from graph_runtime.executor import Executor
from graph_runtime.server.app import REPO_ROOT, create_app
from graph_runtime.server.security import is_loopback_bind

log = logging.getLogger("noodle.server")


def serve(executor: Executor, host: str = "127.0.0.1", port: int = 8188,
          workflows_dir: Path | str | None = None, print_url: bool = True) -> None:
    """Run the server until interrupted (Ctrl+C). The executor's folders are made absolute,
    so the folders served and the folders nodes read and write stay the same ones."""
    executor.folders = executor.folders.resolved()
    if workflows_dir is None:
        workflows_dir = REPO_ROOT / "workflows"
    if not is_loopback_bind(host):
        log.warning("listening on %s: anyone who can reach this address can run workflows "
                    "and read the output folder", host)
    app = create_app(executor, workflows_dir=workflows_dir, bind_host=host)
    shown = f"[{host}]" if ":" in host else host
    if print_url:
        print(f"Noodle canvas on http://{shown}:{port}/ ({len(executor.registry)} node types)",
              file=sys.stderr, flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
