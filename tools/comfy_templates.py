"""Which of ComfyUI's own workflow templates (package `comfyui-workflow-templates` 0.1.3) run.

Each SD1.x/SD2.x/SDXL template is imported, shrunk to a tiny size (64-128 px, 2-4 steps),
pointed at the embedded `noodle-tiny` checkpoint and run. `python -m tools.comfy_templates`
prints the table the README shows; the test suite checks the same rows.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The templates of the Stable Diffusion UNet family (SD1.x, SD2.x, SDXL), by the checkpoint
# each one names; the others (Flux, SD3.5, video, audio, 3D) are other model families.
FAMILY = {
    "default": "SD1.5", "image2image": "SD1.5", "lora": "SD1.5", "lora_multiple": "SD1.5",
    "inpaint_example": "SD1.5 inpainting", "inpain_model_outpainting": "SD1.5 inpainting",
    "area_composition": "SD1.x", "area_composition_reversed": "SD1.x",
    "area_composition_square_area_for_subject": "SD1.x",
    "latent_upscale_different_prompt_model": "SD1.x", "2_pass_pose_worship": "SD1.5",
    "controlnet_example": "SD1.5", "depth_controlnet": "SD1.5", "depth_t2i_adapter": "SD1.5",
    "mixing_controlnets": "SD1.5", "gligen_textbox_example": "SD1.5",
    "esrgan_example": "SD1.5", "embedding_example": "SD2.1", "hiresfix_latent_workflow": "SD2.1",
    "hiresfix_esrgan_workflow": "SD2.1", "sdxl_simple_example": "SDXL",
    "sdxl_refiner_prompt_example": "SDXL", "sdxl_revision_text_prompts": "SDXL",
    "sdxl_revision_zero_positive": "SDXL", "sdxlturbo_example": "SDXL Turbo",
    "txt_to_image_to_video": "SDXL + SVD",
}
# Templates the compatibility work must run today.
MUST_RUN = ("default", "image2image", "hiresfix_latent_workflow", "area_composition")
# Templates waiting for a node family that a planned change adds.
PLANNED = {"LoraLoader": "LoRA", "LoraLoaderModelOnly": "LoRA",
           "ControlNetLoader": "ControlNet", "ControlNetApplyAdvanced": "ControlNet",
           "VAEEncodeForInpaint": "inpainting", "ImagePadForOutpaint": "inpainting",
           "UpscaleModelLoader": "upscaling models", "ImageUpscaleWithModel": "upscaling models"}


TINY_VAE = "noodle-tiny-vae.safetensors"
# The embedded model's own LoRA, ControlNet and upscaler (shipped under models/), standing
# in for the files the templates name.
STAND_INS = {"LoraLoader": ("lora_name", "noodle-tiny-outline.safetensors"),
             "LoraLoaderModelOnly": ("lora_name", "noodle-tiny-outline.safetensors"),
             "ControlNetLoader": ("control_net_name", "noodle-tiny-canny.safetensors"),
             "UpscaleModelLoader": ("model_name", "noodle-tiny-esrgan-2x.safetensors")}


def templates_dir() -> Path:
    import comfyui_workflow_templates

    return Path(comfyui_workflow_templates.__file__).parent / "templates"


def _size(value: Any) -> Any:
    """Image sizes shrink 8x, to a multiple of 64 (the tiny UNet's granularity)."""
    return max(64, 64 * round(value / 512)) if isinstance(value, int) else value


def _offset(value: Any) -> Any:
    return 8 * round(value / 64) if isinstance(value, int) else value


SHRINK: dict[str, dict[str, Callable[[Any], Any]]] = {
    "EmptyLatentImage": {"width": _size, "height": _size, "batch_size": lambda v: 1},
    "LatentUpscale": {"width": _size, "height": _size},
    "ImageScale": {"width": _size, "height": _size},
    "ConditioningSetArea": {"width": _size, "height": _size, "x": _offset, "y": _offset},
}


def shrink(workflow: dict[str, Any], image: str) -> dict[str, Any]:
    """The same graph at toy size on the embedded checkpoint, in place; returns it."""
    for node in workflow["nodes"].values():
        inputs = node.setdefault("inputs", {})
        kind = node["type"]
        for name, fn in SHRINK.get(kind, {}).items():
            if name in inputs and not isinstance(inputs[name], dict):
                inputs[name] = fn(inputs[name])
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = "noodle-tiny"
        elif kind == "VAELoader":
            inputs["vae_name"] = TINY_VAE
        elif kind == "LoadImage":
            inputs["image"] = image
        elif kind in STAND_INS:
            inputs[STAND_INS[kind][0]] = STAND_INS[kind][1]
        elif kind in ("KSampler", "KSamplerAdvanced") and isinstance(inputs.get("steps"), int):
            _shrink_steps(inputs)
    return workflow


def _shrink_steps(inputs: dict[str, Any]) -> None:
    """At most 4 steps; KSamplerAdvanced's start/end steps keep their share of the run."""
    steps = inputs["steps"]
    new = min(steps, 4)
    for key in ("start_at_step", "end_at_step"):
        if isinstance(inputs.get(key), int):
            inputs[key] = min(new, round(inputs[key] * new / steps))
    inputs["steps"] = new


@dataclass
class Row:
    name: str
    family: str
    runs: bool
    why: str


def unknown_types(workflow: dict[str, Any], known: Callable[[str], bool]) -> list[str]:
    return sorted({n["type"] for n in workflow["nodes"].values() if not known(n["type"])})


def check(name: str, executor: Any, registry: Any, folders: Any) -> Row:
    """Import, shrink and run one template; the row says whether it ran and why not."""
    from graph_runtime.executor import WorkflowInvalid
    from graph_runtime.workflow import import_workflow

    data = json.loads((templates_dir() / f"{name}.json").read_text())
    workflow, _ = import_workflow(data, registry)
    as_dict = shrink(json.loads(json.dumps(workflow.to_dict())), "template_input.png")
    missing = unknown_types(as_dict, lambda t: t in registry)
    if missing:
        needs = sorted({PLANNED[t] for t in missing if t in PLANNED})
        why = "nodes not yet available: " + ", ".join(missing)
        if needs and len(needs) == len({PLANNED.get(t) for t in missing}):
            why += f" (planned: {', '.join(needs)})"
        return Row(name, FAMILY[name], False, why)
    try:
        result = executor.run(as_dict, output_dir=folders.output)
    except WorkflowInvalid as exc:
        return Row(name, FAMILY[name], False, "; ".join(e["message"] for e in exc.errors)[:160])
    if not result.ok:
        error = result.error or {}
        return Row(name, FAMILY[name], False, str(error.get("message", error))[:160])
    return Row(name, FAMILY[name], True, "")


def report() -> list[Row]:
    """Every row, run in a scratch folder with the full node library."""
    import numpy as np
    import torch
    from PIL import Image

    import nodes  # noqa: F401  (registers the node library)
    from graph_runtime.cache import OutputCache
    from graph_runtime.executor import Executor
    from graph_runtime.registry import REGISTRY
    from graph_runtime.settings import Folders
    from nodes.loaders import BUNDLED_MODELS

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = Folders(output=root / "output", input=root / "input",
                          models=root / "models", user=root / "user")
        folders.input.mkdir(parents=True)
        # VAELoader's choice: the embedded model's VAE as a file in models/vae/.
        (folders.models / "vae").mkdir(parents=True)
        shutil.copy(BUNDLED_MODELS / "noodle-tiny" / "vae" / "diffusion_pytorch_model.safetensors",
                    folders.models / "vae" / TINY_VAE)
        # embedding_example's `embedding:SDA768.pt`: a stand-in one-vector embedding as wide
        # as the embedded model's text encoder.
        (folders.models / "embeddings").mkdir(parents=True)
        torch.save({"string_to_param": {"*": torch.zeros(1, 32)}},
                   folders.models / "embeddings" / "SDA768.pt")
        pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(folders.input / "template_input.png")
        executor = Executor(REGISTRY, OutputCache(), folders=folders)
        return [check(name, executor, REGISTRY, folders) for name in sorted(FAMILY)]


def markdown(rows: list[Row]) -> str:
    lines = ["| template | model family | runs | why not yet |", "|---|---|---|---|"]
    lines += [f"| `{r.name}` | {r.family} | {'yes' if r.runs else 'no'} | {r.why} |"
              for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(report()))
