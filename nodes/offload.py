"""Memory modes: where model weights live between uses (`noodle run/serve --vram`).

ComfyUI's --highvram / --lowvram / --cpu choices, for our loaders and runners:

- `high`: models stay on the compute device (the accelerator) once loaded.
- `low`: models wait on the CPU (the offload device) and each moves to the compute device
  only while it runs: the text encoder(s) while prompts encode, the UNet for a whole
  sampling loop, the VAE for a decode or encode (diffusers' `enable_model_cpu_offload`).
  Peak accelerator memory is then the largest model plus its activations, not the sum.
- `cpu`: everything loads and runs on the CPU, whatever a loader's `device` says.
- `auto` (the default): `high` when a pipeline's weights fit in the device's free memory
  with a margin, else `low`. On a CPU-only machine it is `high`, which moves nothing.

The loaders ask `placement(device)` where to load and `settle` what they loaded; the
`running()` blocks of the model values (and the text encoders' `on_compute_device`) move an
offloaded model in and back out. Offloading changes where a cached model's weights live,
never the model object, so the executor's cache and the LoRA patches keep working on it.
Every transfer goes through `move`. `low` is honoured even when the compute device is the
CPU itself (each transfer is then a no-op), so its schedule can be checked anywhere.

The engine only passes the flag through `NOODLE_VRAM`; this module is the one reader.
Module level stays free of torch: the node library imports this module for its setting.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graph_runtime.cache import measure
from graph_runtime.settings import document_env, env

if TYPE_CHECKING:
    import torch

ENV_VAR = "NOODLE_VRAM"
MODES = ("auto", "high", "low", "cpu")
document_env(ENV_VAR, "where models wait between uses: auto (on the accelerator when they "
             "fit, else like low; the default), high (always on the accelerator), low (on "
             "the CPU, each moved to the accelerator only while it runs) or cpu (everything "
             "on the CPU)")

# Where an offloaded model waits between uses.
OFFLOAD_DEVICE = "cpu"
# `auto`: what must stay free besides the weights (activations, the cache, other programs).
MARGIN_FRACTION = 0.2
MARGIN_BYTES = 1 << 30

# The compute device of each offloaded (base) module, and how many blocks are running it.
_HOMES: weakref.WeakKeyDictionary[Any, torch.device] = weakref.WeakKeyDictionary()
_USERS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()


def requested_mode() -> str:
    """The memory mode NOODLE_VRAM asks for (`auto` when unset)."""
    chosen = (env(ENV_VAR) or "auto").strip().lower()
    if chosen not in MODES:
        raise ValueError(f"{ENV_VAR}={chosen!r}: expected one of {', '.join(MODES)}")
    return chosen


def move(module: torch.nn.Module, device: torch.device | str) -> None:
    """The one place a model's weights change device (in place: the object stays)."""
    module.to(device)


def _base(module: Any) -> Any:
    """The shared module under a LoRA-patched view (the one loaders registered)."""
    from nodes.diffusion.lora.patching import unpatched

    return unpatched(module)[0]


def parameter_bytes(modules: Iterable[Any]) -> int:
    """The weights' bytes, each shared tensor once (the cache's own measure)."""
    return sum(measure(list(modules)).values())


def fits(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` of weights fit in the device's free memory, keeping a margin.
    Devices that cannot tell (Apple MPS) are taken to fit, as ComfyUI's normal mode does."""
    import torch

    if device.type != "cuda":
        return True
    free, total = torch.cuda.mem_get_info(device)
    return nbytes + max(MARGIN_BYTES, int(MARGIN_FRACTION * total)) <= free


@dataclass(frozen=True)
class Placement:
    """Where a loader puts models under the memory mode: `load_device` to read them onto,
    `compute` to run them on. `dtype("auto")` follows the compute device (fp16 on a GPU),
    not the load device, so an offloaded model has the precision it would have had."""

    mode: str
    compute: torch.device

    @property
    def offloads(self) -> bool:
        """Whether models may wait away from the compute device (`low`, or `auto` with an
        accelerator, decided by size once loaded)."""
        return self.mode == "low" or (self.mode == "auto" and self.compute.type != "cpu")

    @property
    def load_device(self) -> torch.device:
        import torch

        return torch.device(OFFLOAD_DEVICE) if self.offloads else self.compute

    def load_dtype(self, name: str | torch.dtype) -> str | torch.dtype:
        """The dtype to ask the loader for: "auto" resolved for the compute device when the
        models load elsewhere (the CPU would mean fp32)."""
        from nodes.diffusion.devices import pick_dtype

        return pick_dtype(name, self.compute) if self.offloads and name == "auto" else name

    def settle(self, modules: Iterable[Any], dtype: str | torch.dtype = "auto",
               vae: Any = None) -> str:
        """After loading onto `load_device`: keep each model offloaded (`low`) or move it to
        the compute device (`auto` when the whole set fits). Returns the mode applied.
        With `dtype` "auto", `vae` gets the precision "auto" gives it on the compute
        device (fp32 beside an fp16 pipeline when its config says `force_upcast`)."""
        present = [m for m in modules if m is not None]
        if self.offloads and dtype == "auto" and vae is not None:
            from nodes.diffusion.checkpoints import vae_dtype

            vae.to(vae_dtype("auto", vae.dtype, dict(vae.config)))
        if not self.offloads:
            return "cpu" if self.mode == "cpu" else "high"
        if self.mode == "auto" and fits(parameter_bytes(present), self.compute):
            for module in present:
                move(module, self.compute)
            return "high"
        with _LOCK:
            for module in present:
                _HOMES[_base(module)] = self.compute
        return "low"


def placement(device: str | torch.device = "auto") -> Placement:
    """Where a loader asked for `device` ("auto", "cuda", ...) loads and runs models."""
    import torch

    from nodes.diffusion.devices import pick_device

    mode = requested_mode()
    compute = torch.device("cpu") if mode == "cpu" else pick_device(device)
    return Placement(mode, compute)


def is_offloaded(module: Any) -> bool:
    return _base(module) in _HOMES


def compute_device(module: Any) -> torch.device:
    """The device `module` runs on: its home for an offloaded model (wherever its weights
    wait now), else where its weights are. Inputs prepared before a model runs go there."""
    home = _HOMES.get(_base(module))
    return home if home is not None else next(module.parameters()).device


def _enter(module: Any) -> None:
    with _LOCK:
        users = _USERS.get(module, 0)
        if users == 0:
            move(module, _HOMES[module])
        _USERS[module] = users + 1


def _leave(module: Any) -> None:
    with _LOCK:
        users = _USERS.get(module, 1) - 1
        _USERS[module] = users
        if users == 0:
            move(module, OFFLOAD_DEVICE)


@contextmanager
def on_compute_device(*modules: Any) -> Iterator[None]:
    """Each offloaded model among `modules` on its compute device for the block and back
    on the offload device after, even on error. Nested blocks move a model once; models
    that are not offloaded (and None) are left alone."""
    entered: list[Any] = []
    try:
        for module in modules:
            if module is None:
                continue
            base = _base(module)
            if base in _HOMES and base not in entered:
                _enter(base)
                entered.append(base)
        yield
    finally:
        for base in reversed(entered):
            _leave(base)
