"""LoRAs on top of a checkpoint: the LoadLoRA node and what the ComfyUI pack's LoraLoader
shares with it.

A LoRA node never changes the model it receives (that model is cached and other branches
and later runs use it): it returns a new value, the same base module plus one more `Patch`
(this file's deltas at this strength), applied only while the model runs. Its signature
holds the file's fingerprint and the strengths, so everything downstream is cached per
LoRA and strength. The file's tensors are kept in the executor's cache (`memo`), so
changing only a strength re-runs this node without reading the file again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

from graph_runtime import Choice, Float, Folders, folders, memo, node
from nodes.comfyui import model_paths
from nodes.lazy import lazy_module
from nodes.loaders import files_fingerprint
from nodes.types import TextEncoder, UNet

if TYPE_CHECKING:
    from nodes.diffusion.lora.patching import Patch

torch = lazy_module("torch")
_file = lazy_module("nodes.diffusion.lora.file")
_patching = lazy_module("nodes.diffusion.lora.patching")

log = logging.getLogger("noodle.models")


def lora_choices(run_folders: Folders) -> list[str]:
    """LoRA files in models/loras (and the ComfyUI folders), by relative name."""
    try:
        return model_paths.list_models("loras", run_folders)
    except (OSError, ValueError) as exc:  # a broken extra paths file must not hide nodes
        log.warning("listing loras: %s", exc)
        return []


def lora_fingerprint(input_name: str) -> Any:
    """A node's fingerprint hook: the LoRA file's path, size and mtime."""

    def fingerprint(inputs: Mapping[str, Any], run_folders: Folders) -> str | None:
        name = inputs.get(input_name)
        if not isinstance(name, str) or not name:
            return None
        return files_fingerprint(model_paths.find_model("loras", name, run_folders))

    return fingerprint


def lora_tensors(name: str, run_folders: Folders) -> tuple[Path, dict[str, torch.Tensor]]:
    """The LoRA file's tensors, read once per file version and kept in the run cache."""
    path = model_paths.find_model("loras", name, run_folders)
    st = path.stat()
    key = f"lora:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return path, memo(key, lambda: _file.read_lora(path))


def _on_device(delta: Any, device: torch.device) -> Any:
    """A delta with its tensors on `device` (the weights it patches), moved once here
    rather than on every run."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(delta):
        value = getattr(delta, f.name)
        if isinstance(value, torch.Tensor) and value.device != device:
            changes[f.name] = value.to(device)
        elif isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            changes[f.name] = tuple(_on_device(part, device) for part in value)
    return dataclasses.replace(delta, **changes) if changes else delta


def lora_patches(state: Mapping[str, torch.Tensor], modules: Mapping[str, torch.nn.Module | None],
                 strengths: Mapping[str, float], label: str) -> dict[str, Patch]:
    """One `Patch` per component the file patches ("unet", "text_encoder",
    "text_encoder_2"), at that component's strength; none for a strength of 0."""
    bases = {k: (_patching.unpatched(m)[0] if m is not None else None) for k, m in modules.items()}
    found = _file.parse_lora(state, bases)
    patches: dict[str, Patch] = {}
    for component, deltas in found.items():
        base, strength = bases.get(component), float(strengths.get(component, 0.0))
        if base is None or not deltas or strength == 0.0:
            continue
        moved = {n: _on_device(d, base.get_parameter(n).device) for n, d in deltas.items()}
        patches[component] = _patching.Patch(moved, strength, f"{label} @ {strength:g}")
    return patches


def text_modules(text_encoder: TextEncoder | None) -> dict[str, torch.nn.Module | None]:
    """A text encoder's modules by the component names LoRA files use; SDXL's refiner
    has only the second encoder, which is then `model`."""
    if text_encoder is None:
        return {}
    if text_encoder.sdxl and text_encoder.model_2 is None:
        return {"text_encoder_2": text_encoder.model}
    return {"text_encoder": text_encoder.model, "text_encoder_2": text_encoder.model_2}


def patched_text_encoder(text_encoder: TextEncoder, patches: Mapping[str, Patch]
                         ) -> TextEncoder:
    """The text encoder value with the patches stacked on its modules."""
    first, second = text_encoder.model, text_encoder.model_2
    if text_encoder.sdxl and second is None:  # the refiner's only encoder is the second
        first = _patching.with_patch(first, patches.get("text_encoder_2"))
    else:
        first = _patching.with_patch(first, patches.get("text_encoder"))
        if second is not None:
            second = _patching.with_patch(second, patches.get("text_encoder_2"))
    return dataclasses.replace(text_encoder, model=first, model_2=second)


def patched_unet(unet: UNet, patch: Patch | None) -> UNet:
    return unet if patch is None else dataclasses.replace(unet,
                                                          patches=(*unet.patches, patch))


class LoRAResult(NamedTuple):
    unet: UNet
    text_encoder: TextEncoder


LoRAName = Annotated[str, Choice(lora_choices, tooltip="a LoRA file in models/loras")]
Strength = Annotated[float, Float(min=-10.0, max=10.0, step=0.05, tooltip=(
    "how much of the LoRA to add; negative values subtract it"))]


@node("LoadLoRA", category="loaders", fingerprint=lora_fingerprint("name"),
      display_name="Load LoRA")
def load_lora(unet: UNet, text_encoder: TextEncoder | None = None, name: LoRAName = "",
              strength_unet: Strength = 1.0, strength_text: Strength = 1.0) -> LoRAResult:
    """Add a LoRA (kohya, A1111, diffusers/PEFT, LoCon, LoHa, LoKr) to the UNet and the
    text encoder. Chain several to stack them; the models it receives stay unchanged."""
    if not name:
        raise ValueError("LoadLoRA: input 'name': choose a LoRA file (models/loras is "
                         "empty or nothing is selected)")
    path, state = lora_tensors(name, folders())
    modules: dict[str, torch.nn.Module | None] = {"unet": unet.model, **text_modules(text_encoder)}
    strengths = {"unet": strength_unet, "text_encoder": strength_text,
                 "text_encoder_2": strength_text}
    try:
        patches = lora_patches(state, modules, strengths, path.name)
    except ValueError as exc:
        raise ValueError(f"LoadLoRA: input 'name': {name}: {exc}") from exc
    new_text = (patched_text_encoder(text_encoder, patches) if text_encoder is not None
                else None)
    # An unlinked text encoder gives nothing on that output (linking it is then an error).
    return LoRAResult(patched_unet(unet, patches.get("unet")), new_text)  # type: ignore[arg-type]
