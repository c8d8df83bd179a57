"""Noodle's graph engine: typed nodes, workflow files, validation, a caching executor.

It knows nothing about diffusion; the node library registers itself on import.
"""

from graph_runtime.nodes import REGISTRY, Bool, Choice, Float, Int, Seed, Text, node

__all__ = ["REGISTRY", "Bool", "Choice", "Float", "Int", "Seed", "Text", "node"]
