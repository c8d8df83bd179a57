"""Reading weight files into memory of our own, and building modules without random init.

Weights are read into private memory, never left as views of a memory-mapped file: a file
truncated or rewritten on disk while a model built from it is in use would otherwise kill
the whole process with SIGBUS on the next page fault. Read into memory, a changed file is
at worst an error when it is next loaded (a short file is a `WeightsError`).

A ``.safetensors`` file is read lazily (`SafetensorsFile`): its header is parsed and
checked against the file's size at once, and each tensor is read into an allocation of its
own the first time it is asked for. So code that only looks at key names (which family a
checkpoint is) reads no weights, and tensors a model does not keep are freed with the
mapping. When every tensor is wanted (building a module, `items()`), they are read by a few
threads at once: most of the cost is the kernel handing out fresh memory. The file stays
open while the mapping lives, so a file replaced by another one meanwhile is still read
consistently (the old contents). Against views of a mapping this costs about 1 s more per
3.4 GB loaded on two cores (benchmarks/models.py), part of it paid back at the first use.

Modules are created on the meta device (no allocation, no random initialisation) and
receive the tensors with ``load_state_dict(assign=True)``. Pickled ``.bin``/``.ckpt`` files
are only read through ``torch.load(weights_only=True)``, which refuses arbitrary code.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
import weakref
from collections.abc import Callable, ItemsView, Iterator, Mapping, ValuesView
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

StateDict = dict[str, torch.Tensor]
M = TypeVar("M", bound=nn.Module)
READ_WORKERS = min(8, os.cpu_count() or 1)
_PREADV = getattr(os, "preadv", None)  # not on every platform (Windows)


class WeightsError(ValueError):
    """A weight file is missing, unreadable or does not match the model it should fill."""


class SafetensorsFile(Mapping[str, torch.Tensor]):
    """The tensors of a ``.safetensors`` file, each read into memory of its own (writable,
    not file-backed) when first asked for. Names, `len` and `in` read no weights."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed with self
        weakref.finalize(self, self._file.close)
        self._lock = threading.Lock()
        size = os.fstat(self._file.fileno()).st_size
        head = self._file.read(8)
        if len(head) != 8:
            raise WeightsError(f"{self.path}: not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise WeightsError(f"{self.path}: not a safetensors file (header past the end)")
        try:
            header = json.loads(self._file.read(header_len))
        except (ValueError, UnicodeDecodeError) as exc:
            raise WeightsError(f"{self.path}: not a safetensors file ({exc})") from exc
        if not isinstance(header, dict):
            raise WeightsError(f"{self.path}: not a safetensors file (header is not an object)")
        base = 8 + header_len
        self._entries = {name: _entry(self.path, name, info, base, size)
                         for name, info in header.items() if name != "__metadata__"}
        self._read: StateDict = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._read.get(name)
        if tensor is None:
            dtype, shape, offset, nbytes = self._entries[name]
            flat = torch.empty(nbytes, dtype=torch.uint8)
            if nbytes:
                self._fill(flat, offset)
            tensor = self._read[name] = flat.view(dtype).reshape(shape)
        return tensor

    def _fill(self, target: torch.Tensor, offset: int) -> None:
        """Read `target`'s bytes from `offset` (reads may come back short)."""
        view = memoryview(target.numpy()).cast("B")
        done = 0
        while done < len(view):
            got = self._read_at(view[done:], offset + done)
            if not got:
                raise WeightsError(f"{self.path}: the file ended early (truncated or being "
                                   "written?)")
            done += got

    def _read_at(self, view: memoryview, offset: int) -> int:
        """Positional reads where the platform has them (threads read at once), else a
        seek and read under a lock."""
        if _PREADV is not None:
            return int(_PREADV(self._file.fileno(), [view], offset))
        with self._lock:
            self._file.seek(offset)
            return self._file.readinto(view) or 0

    def read_all(self) -> None:
        """Read every tensor not read yet, several at once: most of the cost is the kernel
        handing out fresh memory, which spreads over cores."""
        todo = sorted((n for n in self._entries if n not in self._read),
                      key=lambda n: -self._entries[n][3])
        workers = min(READ_WORKERS, len(todo)) if _PREADV is not None else 1
        if workers <= 1:
            for name in todo:
                self[name]
            return
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(self.__getitem__, todo))

    def items(self) -> ItemsView[str, torch.Tensor]:
        self.read_all()  # every value is wanted: read them all at once
        return super().items()

    def values(self) -> ValuesView[torch.Tensor]:
        self.read_all()
        return super().values()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _entry(path: Path, name: str, info: Any, base: int,
           size: int) -> tuple[torch.dtype, list[int], int, int]:
    """(dtype, shape, file offset, byte count) of one tensor, checked against its dtype and
    shape and against the file's size, so a truncated file fails before any read."""
    try:
        dtype = _ST_DTYPES.get(info["dtype"])
        start, end = (int(v) for v in info["data_offsets"])
        shape = [int(d) for d in info["shape"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: tensor {name} has a malformed header entry") from exc
    if dtype is None:
        raise WeightsError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if not 0 <= start <= end or end - start != math.prod(shape) * itemsize:
        raise WeightsError(f"{path}: tensor {name} has inconsistent offsets")
    if base + end > size:
        raise WeightsError(f"{path}: the file is shorter than its header says (truncated "
                           "or being written?)")
    return dtype, shape, base + start, end - start


def read_safetensors(path: str | Path) -> SafetensorsFile:
    """A ``.safetensors`` file's tensors (read on first use, into memory of their own)."""
    return SafetensorsFile(path)


def read_pickle(path: str | Path) -> StateDict:
    """A ``.bin``/``.ckpt`` state dict through the safe unpickler only.

    Lightning-style checkpoints nest the weights under ``"state_dict"``; that is unwrapped.
    """
    try:
        # Not mmap: tensors backed by the file would SIGBUS if it were truncated.
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types; all mean "not loadable safely"
        raise WeightsError(
            f"{path}: could not be read as plain tensors with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {exc}); convert it to .safetensors"
        ) from exc
    if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"],
                                                                          Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise WeightsError(f"{path}: does not contain a state dict")
    return {k: v for k, v in data.items() if torch.is_tensor(v)}


def read_weights(path: str | Path) -> Mapping[str, torch.Tensor]:
    """Any supported weight file, chosen by extension (sharded indexes included): a
    read-only mapping of names to tensors in memory of their own."""
    path = Path(path)
    name = path.name
    if name.endswith(".index.json"):
        index = json.loads(path.read_text())
        state: StateDict = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(read_weights(path.parent / shard))
        return state
    if name.endswith(".safetensors"):
        return read_safetensors(path)
    if name.endswith((".bin", ".ckpt", ".pt", ".pth")):
        return read_pickle(path)
    raise WeightsError(f"{path}: unknown weight file type")


def find_weights(folder: Path, stems: tuple[str, ...]) -> Path:
    """The weight file in a component folder: safetensors first, then sharded, then pickle.

    ``stems`` are the base names to look for (``diffusion_pytorch_model``, ``model``, ...);
    an ``.fp16`` variant is used when it is the only one present.
    """
    candidates: list[str] = []
    for variant in ("", ".fp16"):
        for stem in stems:
            name = f"{stem}{variant}.safetensors"
            candidates += [name, f"{name}.index.json"]
    for variant in ("", ".fp16"):
        for stem in stems:
            candidates += [f"{stem}{variant}.bin", f"{stem}{variant}.bin.index.json"]
    for candidate in candidates:
        if (folder / candidate).is_file():
            return folder / candidate
    raise WeightsError(f"{folder}: no weights found (looked for {', '.join(candidates[:4])} ...)")


def _cast_floats(tensors: dict[str, torch.Tensor], dtype: torch.dtype
                 ) -> dict[str, torch.Tensor]:
    """Floating-point tensors in `dtype` (what `Module.to(dtype)` converts), several at
    once: an fp16 checkpoint loaded as fp32 spends most of its load time converting, one
    tensor after another on one core, and the conversions release the GIL."""
    todo = [n for n, t in tensors.items() if t.is_floating_point() and t.dtype != dtype]
    if not todo:
        return tensors
    out = dict(tensors)
    with ThreadPoolExecutor(min(READ_WORKERS, len(todo))) as pool:
        casts = pool.map(lambda n: tensors[n].to(dtype), todo)
        for name, cast in zip(todo, casts, strict=True):
            out[name] = cast
    return out


def build_from_state(
    factory: Callable[[], M],
    state: Mapping[str, torch.Tensor],
    dtype: torch.dtype | None,
    device: torch.device | str,
    what: str,
) -> M:
    """Construct ``factory()`` on the meta device and fill it with ``state`` (no copies
    unless a dtype or device change requires one). Missing or unexpected keys are an error
    naming a few of them, because a partial load would silently produce noise.

    The module comes back in eval mode with gradients off (inference is what loading is for);
    call ``.train().requires_grad_(True)`` to fine-tune it.
    """
    with torch.device("meta"):
        module = factory()
    expected = set(module.state_dict().keys())
    got = set(state.keys())
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise WeightsError(
            f"{what}: weights do not match the model config "
            f"({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    if isinstance(state, SafetensorsFile):
        state.read_all()  # after the names are known to match; each tensor read once
    tensors = dict(state)
    if dtype is not None:
        tensors = _cast_floats(tensors, dtype)
    for name, tensor in module.state_dict().items():
        if tuple(tensor.shape) != tuple(tensors[name].shape):
            raise WeightsError(f"{what}: {name} has shape {tuple(tensors[name].shape)}, "
                               f"the config needs {tuple(tensor.shape)}")
    module.load_state_dict(tensors, strict=True, assign=True)
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            raise WeightsError(f"{what}: buffer {name} was not provided by the weights")
    module.to(device=device)
    if dtype is not None:
        module.to(dtype=dtype)
    return module.eval().requires_grad_(False)
