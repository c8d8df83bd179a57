"""ControlNet nodes: LoadControlNet, ApplyControlNet and the CannyEdges preprocessor.

A ControlNet steers a Denoise with an image (edges, depth, pose). LoadControlNet reads a
diffusers folder (config.json + weights) or an original single file
(`control_v11p_sd15_canny.safetensors`) from models/controlnet; ApplyControlNet puts it,
with its image, strength and step range, on both conditionings (copies: the values it
receives stay unchanged), and several chain; Denoise adds their residuals to the UNet's
skip connections at each step inside the range (see `nodes.control_guidance`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from graph_runtime import Bool, Choice, Float, Folders, folders, memo, node, socket_type
from nodes.comfyui import model_paths
from nodes.control_guidance import Control, with_control
from nodes.files import may_read
from nodes.lazy import lazy_module
from nodes.loaders import DTYPES, files_fingerprint
from nodes.types import Conditioning, Image

if TYPE_CHECKING:
    from nodes.diffusion.controlnet import ControlNetModel

kornia = lazy_module("kornia")
torch = lazy_module("torch")
_checkpoints = lazy_module("nodes.diffusion.checkpoints")
_controlnet = lazy_module("nodes.diffusion.controlnet")
_controlnet_convert = lazy_module("nodes.diffusion.controlnet_convert")
_devices = lazy_module("nodes.diffusion.devices")

log = logging.getLogger("noodle.models")
KIND = "controlnet"


@socket_type("CONTROL_NET", color="#00d78d")
@dataclass(frozen=True, eq=False)
class ControlNet:
    """A loaded ControlNetModel and the name it was loaded from."""

    model: ControlNetModel
    source: str = ""


def _folder_models(run_folders: Folders) -> list[str]:
    """diffusers ControlNet folders (config.json inside) in the controlnet folders."""
    names: list[str] = []
    for root in model_paths.model_dirs(KIND, run_folders):
        if root.is_dir():
            names += [p.parent.relative_to(root).as_posix()
                      for p in sorted(root.glob("*/config.json"))]
    return names


def controlnet_choices(run_folders: Folders) -> list[str]:
    """ControlNet files and diffusers folders in models/controlnet (and ComfyUI's folders)."""
    try:
        files = model_paths.list_models(KIND, run_folders)
        return sorted({*files, *_folder_models(run_folders)})
    except (OSError, ValueError) as exc:  # a broken extra paths file must not hide nodes
        log.warning("listing controlnets: %s", exc)
        return []


def find_controlnet(name: str, run_folders: Folders) -> Path:
    """The file or diffusers folder a ControlNet name means: a name in the controlnet
    folders, else a path the run may read."""
    for root in model_paths.model_dirs(KIND, run_folders):
        if (root / name / "config.json").is_file():
            return root / name
    try:
        return model_paths.find_model(KIND, name, run_folders)
    except FileNotFoundError:
        literal = Path(name).expanduser()
        roots = run_folders.allowed_paths
        allowed = None if roots is None else [*model_paths.model_roots(run_folders), *roots]
        if literal.is_absolute() and literal.exists() and may_read(literal, allowed):
            return literal
        raise


def controlnet_fingerprint(inputs: Mapping[str, Any], run_folders: Folders) -> str | None:
    """The ControlNet's path and the size and mtime of its files."""
    name = inputs.get("source")
    if not isinstance(name, str) or not name:
        return None
    try:
        return files_fingerprint(find_controlnet(name, run_folders))
    except (OSError, ValueError):
        return None


def read_controlnet(path: Path, dtype: torch.dtype, device: torch.device) -> ControlNetModel:
    """A diffusers folder or an original single file."""
    if path.is_dir():
        return _checkpoints.load_model_folder(path, _controlnet.ControlNetModel, dtype, device)
    return _controlnet_convert.load_controlnet_file(path, dtype, device)


ControlNetName = Annotated[str, Choice(controlnet_choices, allow_other=True, tooltip=(
    "a ControlNet in models/controlnet: a diffusers folder or an original single file"))]


@node("LoadControlNet", category="loaders", fingerprint=controlnet_fingerprint,
      output="controlnet", display_name="Load ControlNet")
def load_controlnet(source: ControlNetName = "",
                    dtype: Annotated[str, Choice(DTYPES)] = "auto",
                    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto",
                    ) -> ControlNet:
    """Load a ControlNet (SD 1.x, 2.x or XL) to link to ApplyControlNet."""
    if not source:
        raise ValueError("LoadControlNet: input 'source': choose a ControlNet (models/"
                         "controlnet is empty or nothing is selected)")
    path = find_controlnet(source, folders())
    from nodes.offload import placement  # `--vram cpu` keeps it on the CPU too

    dev = placement(device).compute
    dt = _devices.pick_dtype(dtype, dev)
    st = path.stat()
    key = f"controlnet:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{dt}:{dev}"
    return ControlNet(memo(key, lambda: read_controlnet(path, dt, dev)), source)


class ControlledConditioning(NamedTuple):
    positive: Conditioning
    negative: Conditioning


Fraction = Annotated[float, Float(min=0.0, max=1.0, step=0.01)]


def check_range(values: Mapping[str, Any]) -> dict[str, str]:
    start, end = values.get("start_percent"), values.get("end_percent")
    if isinstance(start, float | int) and isinstance(end, float | int) and start > end:
        return {"start_percent": f"{start} must not be above end_percent {end}"}
    return {}


@node("ApplyControlNet", category="conditioning", check_inputs=check_range,
      display_name="Apply ControlNet")
def apply_controlnet(
    positive: Conditioning,
    negative: Conditioning,
    controlnet: ControlNet,
    image: Image,
    strength: Annotated[float, Float(min=0.0, max=10.0, step=0.01, tooltip=(
        "scale of the ControlNet's residuals (diffusers' controlnet_conditioning_scale)"))]
    = 1.0,
    start_percent: Fraction = 0.0,
    end_percent: Fraction = 1.0,
    guess_mode: Annotated[bool, Bool(tooltip=(
        "only the prompt's half sees the control, its residuals growing from 0.1x to 1x"))]
    = False,
) -> ControlledConditioning:
    """Steer Denoise with a control image over a fraction of the steps (diffusers'
    control_guidance_start / end). Chain several to combine ControlNets."""
    if start_percent > end_percent:
        raise ValueError(f"ApplyControlNet: start_percent {start_percent} is above "
                         f"end_percent {end_percent}")
    control = Control(controlnet.model, image.pixels, float(strength), float(start_percent),
                      float(end_percent), bool(guess_mode), controlnet.source)
    return ControlledConditioning(with_control(positive, control),
                                  with_control(negative, control))


def canny_edges(pixels: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Canny edges of `[B, H, W, C]` images in 0..1 as white-on-black RGB images."""
    x = pixels.permute(0, 3, 1, 2).to(torch.float32)
    if x.shape[1] == 4:
        x = x[:, :3]
    _, edges = kornia.filters.canny(x, low_threshold=low, high_threshold=high)
    return edges.clamp(0.0, 1.0).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).contiguous()


Threshold = Annotated[float, Float(min=0.01, max=0.99, step=0.01, tooltip=(
    "on the gradient magnitude of the grey image in 0..1 (ComfyUI's Canny scale)"))]


@node("CannyEdges", category="image", output="IMAGE", display_name="Canny Edges")
def canny(image: Image, low_threshold: Threshold = 0.4,
          high_threshold: Threshold = 0.8) -> Image:
    """Edge map for a canny ControlNet: pixels above `high_threshold` are edges, those
    above `low_threshold` too where they join one (hysteresis)."""
    if low_threshold > high_threshold:
        raise ValueError(f"CannyEdges: low_threshold {low_threshold} is above "
                         f"high_threshold {high_threshold}")
    return Image(canny_edges(image.pixels, low_threshold, high_threshold))
