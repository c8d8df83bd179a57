"""Content-addressed output cache with byte budgets per device and LRU eviction.

Entries are keyed by a node's Merkle signature, so any run and any workflow that computes
the same thing reuses it. Values stay where they were made (GPU tensors stay on the GPU);
each entry's size is measured per device type and each device has its own budget, because
what runs out is one particular memory, not a total. ComfyUI keeps only the current
prompt's keys by default and grows without bound otherwise; here the budget is the bound.

Budgets come from `OutputCache(budgets=...)`, else from the environment
(`NOODLE_CACHE_CPU_BYTES`, `NOODLE_CACHE_CUDA_BYTES`, `NOODLE_CACHE_MPS_BYTES`; plain
numbers or with a K/M/G/T suffix), else the defaults below. A device without a budget is
unbounded.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graph_runtime.settings import env

DEFAULT_BUDGETS: dict[str, int] = {"cpu": 8 * 2**30, "mps": 4 * 2**30}
# With no explicit CUDA budget, keep this share of the device's memory for cached outputs.
CUDA_DEFAULT_SHARE = 0.6
# Bookkeeping charged to every entry, so even outputs that hold nothing are bounded.
ENTRY_OVERHEAD = 64
_SUFFIXES = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str) -> int:
    """'1073741824', '1G', '512m', '1.5GiB' -> bytes."""
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    if s and s[-1] in _SUFFIXES:
        return int(float(s[:-1]) * _SUFFIXES[s[-1]])
    return int(float(s))


def budgets_from_env(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """The default budgets with the `NOODLE_CACHE_*_BYTES` overrides applied."""
    out = dict(DEFAULT_BUDGETS)
    for device in ("cpu", "cuda", "mps"):
        raw = env(f"NOODLE_CACHE_{device.upper()}_BYTES", environ)
        if raw:
            out[device] = parse_bytes(raw)
    return out


def _cuda_total_bytes() -> int | None:
    torch = sys.modules.get("torch")  # the engine never imports torch itself
    if torch is None:
        return None
    try:
        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001 - a broken driver must not break caching
        return None
    return None


# ---------------------------------------------------------------------------- measuring
def _add(sizes: dict[str, int], device: str, n: int) -> None:
    sizes[device] = sizes.get(device, 0) + n


_SCALARS = frozenset({type(None), bool, int, float})


def _measure_into(obj: Any, sizes: dict[str, int], seen: set[int]) -> None:
    kind = type(obj)
    if kind in _SCALARS:  # exact-type fast paths first: most outputs are small
        sizes["cpu"] = sizes.get("cpu", 0) + 32
        return
    if kind is str or kind is bytes:
        sizes["cpu"] = sizes.get("cpu", 0) + 49 + len(obj)
        return
    oid = id(obj)
    if oid in seen:
        return
    seen.add(oid)
    if kind is dict:
        for value in obj.values():
            _measure_into(value, sizes, seen)
    elif kind is list or kind is tuple:
        for value in obj:
            _measure_into(value, sizes, seen)
    elif isinstance(obj, (bool, int, float)):
        _add(sizes, "cpu", 32)
    elif isinstance(obj, (str, bytes)):
        _add(sizes, "cpu", 49 + len(obj))
    elif not _measure_held(obj, sizes):
        parts = _parts(obj)
        if parts is None:  # opaque: measured as itself
            _add(sizes, "cpu", sys.getsizeof(obj))
        for part in parts or ():
            _measure_into(part, sizes, seen)


def _measure_held(obj: Any, sizes: dict[str, int]) -> bool:
    """Objects that say what they hold: `__nbytes__()` (bytes, or bytes per device),
    tensors and arrays (`nbytes` on their device), PIL images. False for anything else."""
    own = getattr(obj, "__nbytes__", None)
    if callable(own):
        n = own()
        for device, count in (n.items() if isinstance(n, dict) else [("cpu", n)]):
            _add(sizes, device, int(count))
        return True
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int) and not isinstance(obj, type):
        device = getattr(obj, "device", None)
        dtype = getattr(device, "type", None)  # torch.device has .type; numpy has none
        _add(sizes, dtype if isinstance(dtype, str) else "cpu", nbytes)
        return True
    size = getattr(obj, "size", None)
    mode = getattr(obj, "mode", None)
    if isinstance(size, tuple) and isinstance(mode, str) and len(size) == 2:  # PIL image
        _add(sizes, "cpu", size[0] * size[1] * max(1, len(mode)))
        return True
    return False


def _parts(obj: Any) -> list[Any] | None:
    """What an object is made of, for measuring: a module's tensors, a container's items,
    a dataclass's fields; None for an object that cannot be looked into."""
    params = getattr(obj, "parameters", None)
    buffers = getattr(obj, "buffers", None)
    if callable(params) and callable(buffers):  # an nn.Module, by duck typing
        return list(params()) + list(buffers())
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if dataclasses.is_dataclass(obj):
        return [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
    return None


def measure(obj: Any) -> dict[str, int]:
    """Bytes held by `obj` per device type ("cpu", "cuda", ...). Tensors count `nbytes`
    on their device, modules their parameters and buffers, containers and dataclasses
    their contents (shared objects once), other objects `__nbytes__()` or their size."""
    sizes: dict[str, int] = {}
    _measure_into(obj, sizes, set())
    return sizes


# ---------------------------------------------------------------------------- the cache
@dataclass
class CacheEntry:
    """A node's outputs plus what an output node showed and wrote, so a cache hit on an
    output node still reports its images and files."""

    outputs: dict[str, Any]
    ui: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)


class OutputCache:
    """Thread-safe LRU of `CacheEntry` by signature under per-device byte budgets."""

    def __init__(self, budgets: dict[str, int | None] | None = None) -> None:
        self.budgets: dict[str, int | None] = (budgets_from_env() if budgets is None
                                               else dict(budgets))
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._used: dict[str, int] = {}
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def budget(self, device: str) -> int | None:
        if device in self.budgets:
            return self.budgets[device]
        if device == "cuda":
            total = _cuda_total_bytes()
            self.budgets["cuda"] = int(total * CUDA_DEFAULT_SHARE) if total else None
            return self.budgets["cuda"]
        return None

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store `entry` (measuring it unless sizes are given), evicting least recently used
        entries on each device over budget. Returns False if it alone exceeds a budget."""
        if not entry.sizes:
            entry.sizes = measure((entry.outputs, entry.ui, entry.files)
                                  if entry.ui or entry.files else entry.outputs)
            entry.sizes["cpu"] = entry.sizes.get("cpu", 0) + ENTRY_OVERHEAD
        with self._lock:
            for device, n in entry.sizes.items():
                limit = self.budget(device)
                if limit is not None and n > limit:
                    self._drop(key)
                    return False
            self._drop(key)
            self._entries[key] = entry
            for device, n in entry.sizes.items():
                self._used[device] = self._used.get(device, 0) + n
            for device in entry.sizes:
                self._evict(device, protect=key)
            return True

    def _drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            for device, n in old.sizes.items():
                self._used[device] -= n

    def _evict(self, device: str, protect: str) -> None:
        limit = self.budget(device)
        if limit is None:
            return
        while self._used.get(device, 0) > limit:
            victim = next((k for k, e in self._entries.items()
                           if k != protect and e.sizes.get(device)), None)
            if victim is None:
                return
            self._drop(victim)
            self.evictions += 1

    def discard(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def free(self, device: str | None = None) -> int:
        """Drop every entry holding memory on `device` (all entries if None). Returns the
        number dropped; used on out-of-memory errors and by the server's /free."""
        with self._lock:
            victims = [k for k, e in self._entries.items()
                       if device is None or e.sizes.get(device)]
            for k in victims:
                self._drop(k)
            self.evictions += len(victims)
            return len(victims)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._used.clear()

    def used(self) -> dict[str, int]:
        with self._lock:
            return {d: n for d, n in self._used.items() if n}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions, "used_bytes": self.used(),
                    "budget_bytes": {d: b for d, b in self.budgets.items()}}
