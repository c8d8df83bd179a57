"""Starting the real `noodle` command in a subprocess, with the toy node library."""

from __future__ import annotations

import os
import sys

from tests.support.paths import REPO

NOODLE = [sys.executable, "-m", "graph_runtime.cli"]
TOY_NODES_MODULE = "tests.support.toy_global"


def noodle_env(**extra: str) -> dict[str, str]:
    """This process's environment for a subprocess: `tests.support` importable, and no
    NOODLE_ setting (folders another test set) leaking into the command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOODLE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env
