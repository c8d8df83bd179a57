"""Counting the operations that make the host wait for the device (or build tensors on the
host) while a sampling loop runs, on the CPU, without CUDA.

On a GPU, reading a value back (`.item()`, `float(t)`, `bool(t)` — `if t:` and a comparison
used as a condition —, `.tolist()`, `.numpy()`, `.cpu()`, a tensor used as an index) waits
for every kernel queued before it, and a tensor built from Python values (`torch.tensor`)
is copied up. A CPU run has no device to wait for, but the same calls happen, so a torch
function mode counts them by call site, from the model's first evaluation on (`arm_on`):
what comes before is the run's setup. A loop without host syncs makes the same number of
them at 4 steps as at 8; what it does once (its first step finding its place in the
schedule, say) is allowed.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_READS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"}
_BUILDS = {"tensor", "as_tensor"}
_INDEXING = {"__getitem__", "__setitem__"}
_HERE = str(Path(__file__).resolve())
_TORCH = str(Path(torch.__file__).resolve().parent)


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__name__", "")


def _tensor_index(args: tuple[Any, ...]) -> bool:
    """Whether an index holds a tensor (read back to pick the elements, or to mask)."""
    if len(args) < 2:
        return False
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(i, torch.Tensor) for i in index)


def _site() -> str:
    """The innermost frame outside torch and this file: where the conversion was asked."""
    for frame in reversed(traceback.extract_stack()[:-1]):
        name = str(Path(frame.filename).resolve())
        if name != _HERE and not name.startswith(_TORCH):
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.line}"
    return "?"


class HostSyncs(TorchFunctionMode):
    """A torch function mode that counts host reads and host-built tensors by call site."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: Counter[str] = Counter()
        self.live = False

    def arm_on(self, module: torch.nn.Module) -> Callable[[], None]:
        """Count from `module`'s first forward call on; returns the hook's remover."""

        def arm(*_: Any) -> None:
            self.live = True

        return module.register_forward_pre_hook(arm).remove

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        kwargs = kwargs or {}
        name = _name(func)
        counted = self.live and (name in _READS or name in _BUILDS
                   or (name in _INDEXING and _tensor_index(args)))
        if counted:
            self.sites[f"{name} at {_site()}"] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.sites.values())


def growth(short: HostSyncs, long: HostSyncs) -> dict[str, tuple[int, int]]:
    """The call sites counted more often in the longer run: per-step conversions."""
    return {site: (short.sites.get(site, 0), n) for site, n in long.sites.items()
            if n > short.sites.get(site, 0)}
