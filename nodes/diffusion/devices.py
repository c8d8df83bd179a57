"""Choosing the device and dtype models run on.

``"auto"`` picks the fastest device present (CUDA, then Apple MPS, then CPU) and a dtype
that device runs well: half precision on accelerators, fp32 on the CPU (where fp16
matmuls are slow or unsupported).
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda > mps > cpu; an explicit name must be available here."""
    if isinstance(name, torch.device):
        return name
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA device is available")
    if device.type == "mps" and not mps_available():
        raise ValueError("device 'mps' was requested but Apple MPS is not available")
    return device


def pick_dtype(name: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``"auto"`` -> fp16 on CUDA/MPS, fp32 on CPU; otherwise fp32 / fp16 / bf16 by name."""
    if isinstance(name, torch.dtype):
        return name
    key = name.strip().lower()
    if key == "auto":
        device_type = torch.device(device).type
        return torch.float16 if device_type in ("cuda", "mps") else torch.float32
    try:
        return DTYPES[key]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use auto, fp32, fp16 or bf16") from None
