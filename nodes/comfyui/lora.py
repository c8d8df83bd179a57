"""ComfyUI's LoRA loaders: LoraLoader (MODEL and CLIP) and LoraLoaderModelOnly.

They patch the way our LoadLoRA does (`nodes.lora`): a new MODEL / CLIP value sharing the
cached weights plus this file's patch, merged only while the model runs, so the models
they receive are never changed and several loaders in a row stack.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, NamedTuple

from graph_runtime import Choice, Float, folders, node
from nodes.comfyui.types import Clip, Model
from nodes.lazy import lazy_module
from nodes.lora import lora_choices, lora_fingerprint, lora_patches, lora_tensors, patched_unet

torch = lazy_module("torch")
_patching = lazy_module("nodes.diffusion.lora.patching")

LoraName = Annotated[str, Choice(lora_choices, tooltip="a LoRA in the loras folders")]
Strength = Annotated[float, Float(min=-100.0, max=100.0, step=0.01)]


class ModelAndClip(NamedTuple):
    MODEL: Model
    CLIP: Clip


def clip_modules(clip: Clip) -> dict[str, torch.nn.Module | None]:
    """The CLIP's encoders by the names LoRA files use (the refiner has only the second)."""
    return {"text_encoder": clip.text_encoder, "text_encoder_2": clip.text_encoder_2}


def _apply(node_type: str, model: Model, clip: Clip | None, lora_name: str,
           strength_model: float, strength_clip: float) -> tuple[Model, Clip | None]:
    if not lora_name:
        raise ValueError(f"{node_type}: input 'lora_name': no LoRA selected (the loras "
                         "folders are empty)")
    path, state = lora_tensors(lora_name, folders())
    modules = {"unet": model.unet.model, **(clip_modules(clip) if clip is not None else {})}
    strengths = {"unet": strength_model, "text_encoder": strength_clip,
                 "text_encoder_2": strength_clip}
    try:
        patches = lora_patches(state, modules, strengths, path.name)
    except ValueError as exc:
        raise ValueError(f"{node_type}: input 'lora_name': {lora_name}: {exc}") from exc
    new_model = replace(model, unet=patched_unet(model.unet, patches.get("unet")))
    if clip is None:
        return new_model, None
    new_clip = replace(
        clip,
        text_encoder=(_patching.with_patch(clip.text_encoder, patches.get("text_encoder"))
                      if clip.text_encoder is not None else None),
        text_encoder_2=(_patching.with_patch(clip.text_encoder_2, patches.get("text_encoder_2"))
                        if clip.text_encoder_2 is not None else None))
    return new_model, new_clip


@node("LoraLoader", category="ComfyUI/loaders", display_name="Load LoRA",
      fingerprint=lora_fingerprint("lora_name"))
def lora_loader(model: Model, clip: Clip, lora_name: LoraName = "",
                strength_model: Strength = 1.0, strength_clip: Strength = 1.0
                ) -> ModelAndClip:
    """Add a LoRA to the model and its CLIP; chain several loaders to stack LoRAs."""
    new_model, new_clip = _apply("LoraLoader", model, clip, lora_name, strength_model,
                                 strength_clip)
    assert new_clip is not None
    return ModelAndClip(new_model, new_clip)


@node("LoraLoaderModelOnly", category="ComfyUI/loaders", output="MODEL",
      display_name="LoraLoaderModelOnly", fingerprint=lora_fingerprint("lora_name"))
def lora_loader_model_only(model: Model, lora_name: LoraName = "",
                           strength_model: Strength = 1.0) -> Model:
    """Add a LoRA to the model only (its text-encoder part, if any, is not used)."""
    return _apply("LoraLoaderModelOnly", model, None, lora_name, strength_model, 0.0)[0]
