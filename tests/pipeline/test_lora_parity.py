"""LoRA parity: txt2img_stages.json with LoadLoRA nodes equals diffusers' pipeline with the
same file loaded by `load_lora_weights` (PEFT) and fused with `fuse_lora(lora_scale=s)`, or,
for two stacked LoRAs, weighted with `set_adapters`: within 1/255 in fp32, on SD 1.x and
SDXL, for files in the kohya layout (diffusers names, and SDXL's original LDM names) and in
the diffusers/PEFT layout."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from graph_runtime import Folders
from graph_runtime.cache import OutputCache
from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from graph_runtime.workflow import Workflow
from nodes.diffusion.checkpoints import load_components
from tests.pipeline.test_txt2img_parity import PROMPTS, stages_overrides
from tests.support.lora_files import write_kohya_lora, write_peft_lora
from tests.support.model_configs import IMAGE_SIZE
from tests.support.tiny_models import TinyModel, TinySDXL
from tests.support.workflows import add_nodes, link, run, shipped

pytest.importorskip("peft")

SEED, STEPS, GUIDANCE = 7, 4, 6.0
TOLERANCE = 1 / 255
SCHEDULER = "EulerDiscreteScheduler"

Writer = Callable[[Path, Any], Path]
WRITERS: dict[str, Writer] = {
    "kohya": lambda path, comp: write_kohya_lora(path, comp, rank=4, alpha=2.0, seed=1),
    "kohya-ldm": lambda path, comp: write_kohya_lora(path, comp, rank=4, alpha=2.0, seed=1,
                                                     ldm_keys=True),
    "peft": lambda path, comp: write_peft_lora(path, comp, rank=4, seed=1),
    "second": lambda path, comp: write_kohya_lora(path, comp, rank=2, alpha=1.0, seed=2),
}


def lora_workflow(source: Path, loras: Sequence[tuple[str, float]]) -> Workflow:
    """txt2img_stages.json with LoadLoRA nodes chained after the loader; the UNet and the
    text encoder of every later node come through them."""
    wf = shipped("txt2img_stages.json", stages_overrides(source, SCHEDULER, None)
                 + [f"8.guidance_scale={GUIDANCE}", f"8.steps={STEPS}"])
    unet, text = link("1", "unet"), link("1", "text_encoder")
    for i, (name, strength) in enumerate(loras):
        nid = str(20 + i)
        add_nodes(wf, {nid: ("LoadLoRA", {"unet": unet, "text_encoder": text, "name": name,
                                          "strength_unet": strength,
                                          "strength_text": strength})})
        unet, text = link(nid, "unet"), link(nid, "text_encoder")
    wf.nodes["4"]["inputs"]["text_encoder"] = text
    wf.nodes["6"]["inputs"]["text_encoder"] = text
    wf.nodes["8"]["inputs"]["unet"] = unet
    return wf


def diffusers_images(kind: str, folder: Path, loras: Sequence[tuple[Path, float]],
                     fuse: bool) -> np.ndarray:
    import diffusers

    pipe = getattr(diffusers, kind).from_pretrained(
        folder, **({"add_watermarker": False} if "XL" in kind else {}))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, SCHEDULER).from_config(pipe.scheduler.config)
    names = [f"l{i}" for i in range(len(loras))]
    for name, (path, _) in zip(names, loras, strict=True):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
    if fuse:
        assert len(loras) == 1
        pipe.fuse_lora(lora_scale=loras[0][1], adapter_names=names)
    else:
        pipe.set_adapters(names, adapter_weights=[s for _, s in loras])
    gens = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(len(PROMPTS))]
    return pipe(prompt=PROMPTS, negative_prompt=[""] * len(PROMPTS), height=IMAGE_SIZE,
                width=IMAGE_SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                generator=gens, output_type="np").images


def _executor(models: Path) -> Executor:
    return Executor(REGISTRY, OutputCache(), Folders(models=models))


def _ours(ex: Executor, folder: Path, loras: Sequence[tuple[str, float]], out: Path
          ) -> np.ndarray:
    wf = lora_workflow(folder, loras)
    return run(ex, wf, out).outputs["9"]["IMAGE"].pixels.numpy()


def _check(folder: Path, kind: str, layouts: Sequence[str], strengths: Sequence[float],
           tmp_path: Path) -> None:
    models = tmp_path / "models"
    comp = load_components(folder)
    files = [WRITERS[layout](models / "loras" / f"{layout}.safetensors", comp)
             for layout in layouts]
    ex = _executor(models)
    ours = _ours(ex, folder, [(f.name, s) for f, s in zip(files, strengths, strict=True)],
                 tmp_path / "out")
    theirs = diffusers_images(kind, folder, list(zip(files, strengths, strict=True)),
                              fuse=len(files) == 1)
    base = _ours(ex, folder, [], tmp_path / "base")
    diff = float(np.abs(ours - theirs).max())
    print(f"\n{kind} {layouts} {strengths}: max diff {diff * 255:.2e}/255")
    assert diff <= TOLERANCE
    # Not vacuous: the LoRA changes the image well beyond the tolerance.
    assert float(np.abs(ours - base).max()) > 10 * TOLERANCE


@pytest.mark.parametrize("strength", [0.5, 1.0])
@pytest.mark.parametrize("layout", ["kohya", "peft"])
def test_sd1_lora_equals_diffusers(layout: str, strength: float, tiny_sd: TinyModel,
                                   tmp_path: Path) -> None:
    _check(tiny_sd.folder, "StableDiffusionPipeline", [layout], [strength], tmp_path)


def test_sd1_two_stacked_loras_equal_diffusers(tiny_sd: TinyModel, tmp_path: Path) -> None:
    _check(tiny_sd.folder, "StableDiffusionPipeline", ["kohya", "second"], [0.8, -0.6],
           tmp_path)


@pytest.mark.parametrize(("layout", "strength"), [("kohya-ldm", 0.5), ("peft", 1.0)])
def test_sdxl_lora_equals_diffusers(layout: str, strength: float, tiny_sdxl: TinySDXL,
                                    tmp_path: Path) -> None:
    _check(tiny_sdxl.base.folder, "StableDiffusionXLPipeline", [layout], [strength], tmp_path)
