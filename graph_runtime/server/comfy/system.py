"""`/system_stats` and `/features`: what this server and machine are, in ComfyUI's shape.

Clients use `/system_stats` as a liveness check and read device memory from it. The
accelerator is described only if the node library has already imported torch (the engine
never imports it itself); otherwise the CPU is the one device reported.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from typing import Any

# The ComfyUI release whose API this server follows (clients compare against it).
COMFYUI_API_VERSION = "0.3.64"


def _noodle_version() -> str:
    try:
        return metadata.version("noodle")
    except metadata.PackageNotFoundError:
        return "0"


def _memory() -> tuple[int, int]:
    """Total and available RAM in bytes, 0 where the platform does not say."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        free = os.sysconf("SC_AVPHYS_PAGES") * page
        return int(total), int(free)
    except (AttributeError, ValueError, OSError):
        return 0, 0


def _devices(ram_total: int, ram_free: int) -> list[dict[str, Any]]:
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    devices: list[dict[str, Any]] = []
    try:
        if cuda is not None and cuda.is_available():
            for index in range(cuda.device_count()):
                free, total = cuda.mem_get_info(index)
                reserved = cuda.memory_reserved(index)
                allocated = cuda.memory_allocated(index)
                devices.append({"name": f"cuda:{index} {cuda.get_device_name(index)}",
                                "type": "cuda", "index": index, "vram_total": int(total),
                                "vram_free": int(free), "torch_vram_total": int(reserved),
                                "torch_vram_free": int(reserved - allocated)})
    except Exception:  # noqa: BLE001 - a driver problem must not break a status page
        devices = []
    if not devices:
        devices.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total,
                        "vram_free": ram_free, "torch_vram_total": 0, "torch_vram_free": 0})
    return devices


def system_stats() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    total, free = _memory()
    return {
        "system": {
            "os": os.name, "ram_total": total, "ram_free": free,
            "comfyui_version": COMFYUI_API_VERSION, "noodle_version": _noodle_version(),
            "required_frontend_version": "", "installed_templates_version": "",
            "required_templates_version": "", "python_version": sys.version,
            "pytorch_version": str(getattr(torch, "__version__", "")),
            "embedded_python": False, "argv": list(sys.argv),
        },
        "devices": _devices(total, free),
    }


def features(max_upload_bytes: int) -> dict[str, Any]:
    """The server's feature flags: no binary previews; the upload limit in bytes."""
    return {"supports_preview_metadata": False, "max_upload_size": float(max_upload_bytes)}
