"""What the canvas's models browser lists: every model file the loaders can read, by kind,
with its size and, where its key names tell, the model family it belongs to.

Families come from the file's header only (a safetensors file starts with a JSON index of
its tensors: names and shapes, no weights), so listing a folder of multi-gigabyte
checkpoints reads a few kilobytes each; answers are kept per path, size and mtime.
Diffusers folders are classified from their UNet config.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from graph_runtime import REGISTRY, Folders
from nodes.comfyui.model_paths import find_model, list_models
from nodes.lazy import lazy_module

_model_family = lazy_module("nodes.diffusion.model_family")

log = logging.getLogger("noodle.models")

# The kinds the browser shows, in its order.
LIBRARY_KINDS: tuple[str, ...] = ("checkpoints", "vae", "loras", "embeddings", "controlnet",
                                  "upscale_models")
# A header bigger than this is no safetensors index (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 2**20


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, without reading any weights."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path.name}: too short for a safetensors file")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"{path.name}: not a safetensors header")
        index = json.loads(f.read(size))
    return {k: tuple(v.get("shape", ())) for k, v in index.items()
            if k != "__metadata__" and isinstance(v, dict)}


def _family_from_keys(kind: str, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """A checkpoint's family by `detect_family`; an embedding's by its vector width."""
    if kind == "checkpoints":
        state = {k: SimpleNamespace(shape=s) for k, s in shapes.items()}
        try:
            return _model_family.detect_family(state)  # type: ignore[arg-type]
        except ValueError:
            return None
    if kind == "embeddings":
        if any(k in shapes for k in ("clip_g", "clip_l")):
            return "sdxl"
        widths = {s[-1] for s in shapes.values() if s}
        return {768: "sd1", 1024: "sd2"}.get(next(iter(widths))) if len(widths) == 1 else None
    if kind == "loras" and any("lora_te2_" in k or "text_encoder_2" in k for k in shapes):
        return "sdxl"
    return None


def _folder_family(path: Path) -> str | None:
    """A diffusers pipeline folder's family from its UNet config."""
    try:
        config = json.loads((path / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return {768: "sd1", 1024: "sd2"}.get(config.get("cross_attention_dim"))


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@lru_cache(maxsize=4096)
def _describe(kind: str, path: str, size: int, mtime_ns: int) -> tuple[int, str | None]:
    """Size in bytes and family of one model; cached by path, size and mtime."""
    p = Path(path)
    if p.is_dir():
        return _folder_size(p), _folder_family(p)
    family = None
    if p.suffix.lower() in (".safetensors", ".sft"):
        try:
            family = _family_from_keys(kind, safetensors_shapes(p))
        except (OSError, ValueError) as exc:
            log.debug("reading %s: %s", p, exc)
    return size, family


def _source(kind: str, name: str, path: Path, folders: Folders) -> str:
    """What our own loader takes for this model: its name, except a VAE file, which LoadVAE
    finds by its place under the models folder (or its full path elsewhere)."""
    if kind != "vae":
        return name
    try:
        return path.resolve().relative_to(folders.models.resolve()).as_posix()
    except ValueError:
        return str(path)


def describe_model(kind: str, name: str, folders: Folders) -> dict[str, Any]:
    """One listed model: kind, name, what our loader takes, size in bytes and family."""
    path = find_model(kind, name, folders)
    st = path.stat()
    size, family = _describe(kind, str(path), st.st_size, st.st_mtime_ns)
    return {"kind": kind, "name": name, "source": _source(kind, name, path, folders),
            "size": size, "family": family}


def model_library(folders: Folders) -> list[dict[str, Any]]:
    """Every model of the browser's kinds (`GET /api/model-library`)."""
    out: list[dict[str, Any]] = []
    for kind in LIBRARY_KINDS:
        for name in list_models(kind, folders):
            try:
                out.append(describe_model(kind, name, folders))
            except (OSError, FileNotFoundError) as exc:
                log.warning("listing %s %s: %s", kind, name, exc)
    return out


REGISTRY.provide("model_library", model_library)
