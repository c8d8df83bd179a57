"""Reading weight files without copying them, and building modules without random init.

Safetensors files are memory-mapped and their tensors are views of the mapping, so loading
a model costs page faults on first use rather than a full read plus a copy. Modules are
created on the meta device (no allocation, no random initialisation) and receive the file's
tensors with ``load_state_dict(assign=True)``. Pickled ``.bin``/``.ckpt`` files are only
read through ``torch.load(weights_only=True)``, which refuses arbitrary code.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

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


class WeightsError(ValueError):
    """A weight file is missing, unreadable or does not match the model it should fill."""


def read_safetensors(path: str | Path) -> StateDict:
    """Map a ``.safetensors`` file and return tensors that are views of the mapping.

    The mapping is copy-on-write: the file is never modified, yet the tensors are
    writable (so optimisers or in-place ``.to_()`` calls keep working).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise WeightsError(f"{path}: not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", head)
        try:
            header = json.loads(fh.read(header_len))
        except (ValueError, UnicodeDecodeError) as exc:
            raise WeightsError(f"{path}: not a safetensors file ({exc})") from exc
        size = path.stat().st_size
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    base = 8 + header_len
    tensors: StateDict = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise WeightsError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        shape = info["shape"]
        if end == start or mapped is None:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        itemsize = torch.empty((), dtype=dtype).element_size()
        flat = torch.frombuffer(mapped, dtype=dtype, count=(end - start) // itemsize,
                                offset=base + start)
        tensors[name] = flat.reshape(shape)
    return tensors


def read_pickle(path: str | Path) -> StateDict:
    """A ``.bin``/``.ckpt`` state dict through the safe unpickler only.

    Lightning-style checkpoints nest the weights under ``"state_dict"``; that is unwrapped.
    """
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
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


def read_weights(path: str | Path) -> StateDict:
    """Any supported weight file, chosen by extension (sharded indexes included)."""
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
    for name, tensor in module.state_dict().items():
        if tuple(tensor.shape) != tuple(state[name].shape):
            raise WeightsError(f"{what}: {name} has shape {tuple(state[name].shape)}, "
                               f"the config needs {tuple(tensor.shape)}")
    module.load_state_dict(dict(state), strict=True, assign=True)
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            raise WeightsError(f"{what}: buffer {name} was not provided by the weights")
    module.to(device=device)
    if dtype is not None:
        module.to(dtype=dtype)
    return module.eval().requires_grad_(False)
