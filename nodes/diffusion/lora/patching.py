"""Applying LoRA patches to a shared, cached model without ever changing it.

A model that the executor has cached may be used by any later run, with or without LoRAs,
so a LoRA is never merged into it in place. A patched model is instead a lightweight value:
the base module plus a list of `Patch`es (one LoRA file's deltas at one strength). While a
node runs it (`patched`), affected parameters are swapped for merged copies
(base + the sum of strength x delta), and the original parameter objects are put back
afterwards, even on error. The base weights are never changed, so the base model gives
bit-identical results after any number of LoRA runs, and at rest a LoRA costs only its own
tensors, not a copy of the model.

By default every affected weight is merged once per run, so the sampling loop runs as fast
as an unpatched model's; on an accelerator the originals wait in CPU memory meanwhile, so
the device holds one version of each weight. Where even that is too much memory
(NOODLE_LORA_MERGE=per_layer), each layer is merged just while it runs (`layerwise`), at
the cost of merging again on every step.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from graph_runtime.settings import document_env, env
from nodes.diffusion.lora.layerwise import merged_per_layer


class Delta(Protocol):
    """A weight difference read from a LoRA file (see `nodes.diffusion.lora.deltas`)."""

    def weight(self, shape: torch.Size, dtype: torch.dtype, device: torch.device
               ) -> torch.Tensor: ...

    def tensors(self) -> Iterator[torch.Tensor]: ...


@dataclass(frozen=True, eq=False)
class Patch:
    """One LoRA file's deltas for one module (parameter name -> delta) at one strength.

    `label` names the file and strength in errors and logs."""

    deltas: Mapping[str, Delta]
    strength: float
    label: str = ""

    def __nbytes__(self) -> dict[str, int]:
        """The delta tensors' bytes per device (the base model is counted by its loader)."""
        sizes: dict[str, int] = {}
        seen: set[int] = set()
        for delta in self.deltas.values():
            for t in delta.tensors():
                if id(t) in seen:
                    continue
                seen.add(id(t))
                sizes[t.device.type] = sizes.get(t.device.type, 0) + t.nelement() * t.element_size()
        return sizes


# The patches currently applied to each base module, so that nested uses (a sampler calling
# the patched UNet once per step inside a run that already applied them) merge only once.
_ACTIVE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[Patch, ...]] = (
    weakref.WeakKeyDictionary())
_LOCK = threading.RLock()


def merged_weight(original: torch.Tensor, name: str, patches: Sequence[Patch]
                  ) -> torch.Tensor | None:
    """`original` + sum of strength x delta for parameter `name`, computed in float32 and
    returned in the original's dtype; None when no patch touches it (or all strengths are 0)."""
    found = [(p.deltas[name], p.strength) for p in patches
             if name in p.deltas and p.strength != 0.0]
    if not found:
        return None
    merged = original.detach().to(torch.float32, copy=True)
    for delta, strength in found:
        merged.add_(delta.weight(original.shape, torch.float32, original.device),
                    alpha=strength)
    return merged.to(original.dtype)


def _owner(base: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    module = base.get_submodule(path) if path else base
    if leaf not in module._parameters:
        raise KeyError(f"{type(base).__name__} has no parameter {name!r}")
    return module, leaf


def _names(patches: Sequence[Patch]) -> list[str]:
    names: dict[str, None] = {}
    for patch in patches:
        names.update(dict.fromkeys(patch.deltas))
    return list(names)


@contextmanager
def _merged_at_once(base: torch.nn.Module, patches: tuple[Patch, ...]) -> Iterator[None]:
    """Every affected parameter swapped for its merged copy for the whole block. On an
    accelerator the originals wait in CPU memory meanwhile (exact copies, moved back after),
    so the device holds one version of each weight, as an in-place merge would."""
    saved: list[tuple[torch.nn.Module, str, Any, torch.device]] = []
    try:
        with torch.no_grad():
            for name in _names(patches):
                module, leaf = _owner(base, name)
                original = module._parameters[leaf]
                assert original is not None
                merged = merged_weight(original, name, patches)
                if merged is None:
                    continue
                device = original.device
                module._parameters[leaf] = torch.nn.Parameter(merged, requires_grad=False)
                saved.append((module, leaf, original, device))
                if device.type != "cpu":
                    original.data = original.data.to("cpu")
        yield
    finally:
        for module, leaf, original, device in reversed(saved):
            if original.device != device:
                original.data = original.data.to(device)
            module._parameters[leaf] = original


STRATEGY_ENV = "NOODLE_LORA_MERGE"
document_env(STRATEGY_ENV, "how LoRA patches are merged while a model runs: at_once (the "
             "default: fastest steps) or per_layer (a few merged layers at a time: least "
             "memory, about twice the UNet step time on the CPU)")
STRATEGIES = ("at_once", "per_layer")


def merge_strategy() -> str:
    """The configured strategy ("at_once" unless NOODLE_LORA_MERGE says "per_layer")."""
    chosen = env(STRATEGY_ENV) or "at_once"
    if chosen not in STRATEGIES:
        raise ValueError(f"{STRATEGY_ENV}={chosen!r}: expected one of {', '.join(STRATEGIES)}")
    return chosen


@contextmanager
def patched(base: torch.nn.Module, patches: Sequence[Patch], strategy: str | None = None
            ) -> Iterator[torch.nn.Module]:
    """`base` running with `patches` merged into copies of the parameters they touch, for
    the duration (`strategy`: "at_once" or "per_layer", by default `merge_strategy()`).
    Re-entrant for the same patches; the original parameters are restored after."""
    patches = tuple(patches)
    with _LOCK:
        active = _ACTIVE.get(base)
        if active is not None:
            if active == patches:
                yield base
                return
            raise RuntimeError("a model is already running with other LoRA patches; "
                               "patched models run one at a time")
        if not patches:
            yield base
            return
        strategy = strategy or merge_strategy()
        if strategy == "at_once":
            block = _merged_at_once(base, patches)
        elif strategy == "per_layer":
            block = merged_per_layer(base, _names(patches),
                                     lambda name, w: merged_weight(w, name, patches))
        else:
            raise ValueError(f"unknown LoRA merge strategy {strategy!r}")
        with block:
            _ACTIVE[base] = patches
            try:
                yield base
            finally:
                _ACTIVE.pop(base, None)


class PatchedModule(torch.nn.Module):
    """A base module seen through LoRA patches: calling it runs the base with the patches
    applied (merged once per call, or once for a whole `running()` block); every other
    attribute is the base's, so code written for the base model (its config, dtype,
    submodules) works on it unchanged. The base is shared, never changed."""

    def __init__(self, base: torch.nn.Module, patches: Sequence[Patch]) -> None:
        super().__init__()
        self.base = base
        object.__setattr__(self, "patches", tuple(patches))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("__") or "base" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self._modules["base"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with patched(self.base, self.patches):
            return self.base(*args, **kwargs)

    @contextmanager
    def running(self) -> Iterator[PatchedModule]:
        """Keep the patches applied for a block of calls (a whole sampling loop)."""
        with patched(self.base, self.patches):
            yield self

    def __nbytes__(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for patch in self.patches:
            for device, n in patch.__nbytes__().items():
                sizes[device] = sizes.get(device, 0) + n
        return sizes


def unpatched(module: torch.nn.Module) -> tuple[torch.nn.Module, tuple[Patch, ...]]:
    """The base module and the patches already on it (none for a plain module)."""
    if isinstance(module, PatchedModule):
        return module.base, module.patches
    return module, ()


def with_patch(module: torch.nn.Module, patch: Patch | None) -> torch.nn.Module:
    """`module` with one more patch (stacked after its own); unchanged for None."""
    if patch is None or not patch.deltas:
        return module
    base, patches = unpatched(module)
    return PatchedModule(base, (*patches, patch))
