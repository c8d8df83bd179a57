"""`torch.compile` wrappers for shared models, made once per model and settings.

A compiled wrapper (`torch.compile(module)`) shares the module's parameters: no weight is
copied, and whatever the module holds when it is called is what the compiled code reads.
So LoRA patches (which swap parameters in the base module for the duration of a run),
attention slicing (set on the module before each use) and offloading (which moves the
module's weights) all reach the compiled code; torch's guards recompile only when what
the graph was specialised on changes (input shapes or dtypes, the device, the slicing).

Wrappers are kept on the module itself, per (mode, backend, dynamic), so a re-run of the
compile node, or another workflow compiling the same cached model, reuses the compiled
code; they go away with the module.

Modes that replay CUDA graphs (reduce-overhead, max-autotune) return outputs in buffers the
next call overwrites, while schedulers keep earlier model outputs (PNDM, the multistep
solvers): each call therefore starts a new graph step and hands back a copy.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from nodes.diffusion.lora.patching import Patch, PatchedModule, patched

CompileKey = tuple[str, str, bool]
_ATTRIBUTE = "_noodle_compiled"
_LOCK = threading.Lock()
CUDAGRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})
# Wrappers whose mode replays CUDA graphs.
_GRAPHED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def compiled_module(module: torch.nn.Module, mode: str = "default", backend: str = "inductor",
                    dynamic: bool = False) -> torch.nn.Module:
    """The compiled wrapper of `module` for these settings, made on first use.

    Kept in the module's `__dict__` (not as a submodule: its parameters would be counted
    twice), so its life is the module's. Compilation itself happens on the first call.
    The module's parameters stop requiring gradients (nothing here trains)."""
    key: CompileKey = (mode, backend, dynamic)
    with _LOCK:
        cache: dict[CompileKey, torch.nn.Module] | None = module.__dict__.get(_ATTRIBUTE)
        if cache is None:
            cache = {}
            object.__setattr__(module, _ATTRIBUTE, cache)
        wrapper = cache.get(key)
        if wrapper is None:
            # Inference only, and LoRA's merged weights are made without gradients: with the
            # base's alike, swapping them in does not fail torch's guards (a recompile).
            module.requires_grad_(False)
            options = None if mode == "default" else mode
            wrapper = torch.compile(module, mode=options, backend=backend, dynamic=dynamic)
            if mode in CUDAGRAPH_MODES:
                _GRAPHED.add(wrapper)
            cache[key] = wrapper
        return wrapper


def call_compiled(compiled: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """One call of a compiled wrapper; for CUDA-graph modes a new graph step, and a copy of
    the output, which the next replay would overwrite."""
    if compiled not in _GRAPHED:
        return compiled(*args, **kwargs)
    torch.compiler.cudagraph_mark_step_begin()
    out = compiled(*args, **kwargs)
    return out.clone() if isinstance(out, torch.Tensor) else out


class CompiledPatched(PatchedModule):
    """A base module (LoRA-patched or not) whose calls run through its compiled wrapper:
    the patches are swapped into the base (as for any patched module), then the compiled
    code runs on the base's current parameters. Every other attribute is the base's."""

    def __init__(self, base: torch.nn.Module, patches: Sequence[Patch],
                 compiled: torch.nn.Module) -> None:
        super().__init__(base, patches)
        object.__setattr__(self, "compiled", compiled)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with patched(self.base, self.patches):
            return call_compiled(self.compiled, *args, **kwargs)


def runner(base: torch.nn.Module, patches: Sequence[Patch], compiled: torch.nn.Module
           ) -> torch.nn.Module:
    """What a sampler calls for a compiled UNet: the wrapper, seen through the patches."""
    if patches or compiled in _GRAPHED:
        return CompiledPatched(base, patches, compiled)
    return compiled
