"""`noodle serve`: build the app around an executor and run it.

The executor arrives ready: its registry filled by the node library the caller imported,
its cache budgeted, its folders chosen. The shipped workflows default to the ones next to
the package. Binding to anything but a loopback address has to be asked for explicitly,
needs an access token (see `auth`), and a warning says what that exposes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from aiohttp import web

from graph_runtime.executor import Executor
from graph_runtime.server.app import REPO_ROOT, create_app
from graph_runtime.server.auth import require_token
from graph_runtime.server.backend import Backend
from graph_runtime.server.security import is_loopback_bind

log = logging.getLogger("noodle.server")


def serve(executor: Executor, host: str = "127.0.0.1", port: int = 8188,
          workflows_dir: Path | str | None = None, print_url: bool = True,
          auth_token: str | None = None, state_db: Path | str | None = None,
          requeue_interrupted: bool = False, backend: Backend | None = None,
          preview_every: int | None = None) -> None:
    """Run the server until interrupted (Ctrl+C). The executor's folders are made absolute,
    so the folders served and the folders nodes read and write stay the same ones. A
    non-loopback `host` needs an `auth_token` (`SettingsError` otherwise). `state_db` and
    `requeue_interrupted`: where the queue and history are kept, see `create_app`;
    `backend`: where prompts run (default: this executor); `preview_every`: step previews
    every N steps (default `app.PREVIEW_EVERY`; 0: none)."""
    require_token(host, auth_token)
    executor.folders = executor.folders.resolved()
    if workflows_dir is None:
        workflows_dir = REPO_ROOT / "workflows"
    if not is_loopback_bind(host):
        log.warning("listening on %s: anyone who can reach this address and has the access "
                    "token can run workflows and read the output folder", host)
    app = create_app(executor, workflows_dir=workflows_dir, bind_host=host,
                     auth_token=auth_token, state_db=state_db,
                     requeue_interrupted=requeue_interrupted, backend=backend,
                     **({} if preview_every is None else {"preview_every": preview_every}))
    shown = f"[{host}]" if ":" in host else host
    if print_url:
        page = "login" if auth_token is not None else ""
        print(f"Noodle canvas on http://{shown}:{port}/{page} ({len(executor.registry)} node "
              "types)", file=sys.stderr, flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
