"""Importing this module registers the whole toy library into the process-wide registry.

It is the node library that `noodle` subprocesses load by name (`--nodes` or
`NOODLE_NODES`), so the command tests run the same toy nodes as the in-process tests.
"""

from __future__ import annotations

from graph_runtime import registry
from tests.support.toy_nodes import register_toy_nodes

register_toy_nodes(registry.REGISTRY)
