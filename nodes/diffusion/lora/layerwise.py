"""LoRA patches merged layer by layer while a model runs, when memory is tightest.

Merging every affected weight at once costs a copy of all of them beside the originals
(a LoRA on SD 1.5's attention layers touches about a gigabyte of weights). Here each patched
parameter is swapped for its merged copy just before the module that reads it runs and
swapped back right after, so only a few layers' copies exist at any moment; the price is
merging again on every call (on the CPU, about as long as the UNet step itself).

The module that reads a weight is usually its owner (an `nn.Linear` called as a module),
but some layers' weights are read directly by the module around them (a fused projection,
a 1x1 convolution run as a matrix product). Both the owner and its parent are watched, and
whichever runs first merges; the same one restores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

Merge = Callable[[str, torch.Tensor], "torch.Tensor | None"]


def _watchers(base: torch.nn.Module, names: list[str]
              ) -> tuple[dict[str, tuple[torch.nn.Module, str]],
                         dict[int, tuple[torch.nn.Module, list[str]]]]:
    """Each parameter's owner and leaf name, and for every module to watch (owners and
    their parents) the parameters it may merge."""
    modules = dict(base.named_modules())
    owners: dict[str, tuple[torch.nn.Module, str]] = {}
    watch: dict[int, tuple[torch.nn.Module, list[str]]] = {}
    for name in names:
        path, _, leaf = name.rpartition(".")
        owner = modules[path]
        parent = modules[path.rpartition(".")[0]] if path else owner
        owners[name] = (owner, leaf)
        for module in dict.fromkeys((owner, parent)):
            watch.setdefault(id(module), (module, []))[1].append(name)
    return owners, watch


@contextmanager
def merged_per_layer(base: torch.nn.Module, names: list[str], merge: Merge
                     ) -> Iterator[None]:
    """While open, every call of a module of `base` that reads one of `names` sees
    `merge(name, original)` in its place (None: leave it as it is)."""
    owners, watch = _watchers(base, names)
    live: dict[str, tuple[torch.nn.Module, Any]] = {}

    def swap_in(module: torch.nn.Module, args: Any) -> None:
        with torch.no_grad():
            for name in watch[id(module)][1]:
                if name in live:
                    continue
                owner, leaf = owners[name]
                original = owner._parameters[leaf]
                assert original is not None
                merged = merge(name, original)
                if merged is not None:
                    owner._parameters[leaf] = torch.nn.Parameter(merged, requires_grad=False)
                    live[name] = (module, original)

    def swap_out(module: torch.nn.Module, args: Any, output: Any) -> None:
        for name in watch[id(module)][1]:
            entry = live.get(name)
            if entry is not None and entry[0] is module:
                owner, leaf = owners[name]
                owner._parameters[leaf] = entry[1]
                del live[name]

    handles = []
    try:
        for module, _ in watch.values():
            handles.append(module.register_forward_pre_hook(swap_in))
            handles.append(module.register_forward_hook(swap_out, always_call=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name, (_, original) in list(live.items()):
            owner, leaf = owners[name]
            owner._parameters[leaf] = original
        live.clear()
