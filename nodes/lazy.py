"""Heavy libraries imported when first used, not when the node library is imported.

`noodle validate`, `noodle nodes` and `noodle --help` need only the nodes' signatures, yet
torch and transformers take seconds and hundreds of megabytes to import. So the modules
that declare nodes bind heavy libraries as `torch = lazy_module("torch")`: the name works
as the module does (`torch.cat`, `torch.Tensor`, `F.interpolate`) and imports it on the
first attribute read, which happens only once a node runs. Annotations mentioning them
stay strings (`from __future__ import annotations`), and model code (`nn.Module`
subclasses) is imported inside the functions that build models.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module `name`; the first attribute read imports it (and keeps it, so
    later reads cost one dictionary lookup more than the module's own)."""

    __slots__ = ("_module", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_module(name: str) -> Any:
    """`name`, imported on first use. Typed `Any` so call sites read as the module's."""
    return LazyModule(name)
