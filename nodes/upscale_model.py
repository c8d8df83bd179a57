"""The UPSCALE_MODEL socket value and what our LoadUpscaleModel / UpscaleImage and the
ComfyUI pack's UpscaleModelLoader / ImageUpscaleWithModel share: listing and reading the
files of `models/upscale_models`, and running a model over an image in tiles.

A model file is read once per file version and kept in the executor's cache (`memo`); its
network lives on the default device (the GPU when there is one). Tiles keep the network's
activations bounded, and the result is assembled on the CPU, so a 4x upscale of a 1024^2
image needs one tile's memory on the device; on a CUDA out-of-memory error the tile size is
halved (down to 128) and the image tried again, as ComfyUI does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graph_runtime import Folders, current, memo, socket_type
from nodes.comfyui import model_paths
from nodes.lazy import lazy_module
from nodes.loaders import files_fingerprint
from nodes.types import Image

if TYPE_CHECKING:
    from nodes.upscalers.loading import LoadedUpscaler
if TYPE_CHECKING:
    from torch import nn

torch = lazy_module("torch")
_devices = lazy_module("nodes.diffusion.devices")
_loading = lazy_module("nodes.upscalers.loading")
_tiles = lazy_module("nodes.upscalers.tiles")

log = logging.getLogger("noodle.models")

KIND = "upscale_models"
MIN_TILE = 128


@socket_type("UPSCALE_MODEL", color="#88c0d0")
@dataclass(frozen=True, eq=False)
class UpscaleModel:
    """An image-to-image network that enlarges by `scale`; counted by its parameters."""

    loaded: LoadedUpscaler
    name: str = ""

    @property
    def scale(self) -> int:
        return self.loaded.scale

    @property
    def module(self) -> nn.Module:
        return self.loaded.module

    def __nbytes__(self) -> dict[str, int]:
        from graph_runtime.cache import measure

        return measure(self.loaded.module)


def upscale_model_choices(run_folders: Folders) -> list[str]:
    """Files in models/upscale_models (and ComfyUI's folders), by relative name."""
    try:
        return model_paths.list_models(KIND, run_folders)
    except (OSError, ValueError) as exc:  # a broken extra paths file must not hide nodes
        log.warning("listing upscale models: %s", exc)
        return []


def upscale_model_fingerprint(input_name: str) -> Any:
    """A node's fingerprint hook: the model file's path, size and mtime."""

    def fingerprint(inputs: Mapping[str, Any], run_folders: Folders) -> str | None:
        name = inputs.get(input_name)
        if not isinstance(name, str) or not name:
            return None
        return files_fingerprint(model_paths.find_model(KIND, name, run_folders))

    return fingerprint


def load_upscale_model(name: str, run_folders: Folders, node_type: str) -> UpscaleModel:
    """The named file as a network on the default device, read once per file version."""
    if not name:
        raise ValueError(f"{node_type}: choose an upscale model (models/upscale_models is "
                         "empty or nothing is selected)")
    path = model_paths.find_model(KIND, name, run_folders)
    st = path.stat()
    key = f"upscale_model:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"

    def build() -> LoadedUpscaler:
        try:
            loaded = _loading.load_upscaler(_loading.read_state(path))
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ValueError(f"{node_type}: {name}: {exc}") from exc
        loaded.module.to(_devices.pick_device("auto"))
        return loaded

    return UpscaleModel(memo(key, build), path.name)


def report_tile(done: int, total: int) -> None:
    """Progress per tile (and a chance to interrupt) inside a run; nothing outside one."""
    ctx = current()
    if ctx is not None:
        ctx.progress(done, total)


def upscale_pixels(model: UpscaleModel, image: Image, tile: int, overlap: int,
                   margin: float) -> Image:
    """The images enlarged by the model, tile by tile, clamped to 0..1."""
    param = next(model.module.parameters())
    x = image.pixels.movedim(-1, 1).to(param.device, param.dtype)
    while True:
        try:
            out = _tiles.tiled(x, model.loaded.run, model.scale, tile, min(overlap, tile - 1),
                        margin, report_tile)
            break
        except torch.cuda.OutOfMemoryError:
            if tile // 2 < MIN_TILE:
                raise
            tile //= 2
            log.warning("upscaling ran out of GPU memory; retrying with %d px tiles", tile)
            torch.cuda.empty_cache()
    return Image(out.clamp(0, 1).movedim(1, -1).contiguous())
