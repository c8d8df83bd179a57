"""Noodle's graph engine: typed nodes, workflow files, validation, a caching executor.

It knows nothing about diffusion; a node library registers its socket types and nodes on
import. What a node library needs is importable from here:

    from typing import Annotated
    from graph_runtime import Int, node

    @node("Add", category="math", output="sum")
    def add(a: int, b: Annotated[int, Int(min=0)] = 1) -> int:
        return a + b
"""

from graph_runtime.context import current, folders, memo
from graph_runtime.registry import REGISTRY, Registry, node
from graph_runtime.settings import Folders
from graph_runtime.sockets import SocketType, socket_type
from graph_runtime.widgets import Bool, Choice, Float, Int, Seed, Text

__all__ = [
    "REGISTRY", "Bool", "Choice", "Float", "Folders", "Int", "Registry", "Seed", "SocketType",
    "Text", "current", "folders", "memo", "node", "socket_type",
]
