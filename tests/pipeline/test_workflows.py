"""The shipped workflows: they validate, look tidy on a canvas, run headless, and the
prompt-variants workflow equals diffusers' prompt lists with one seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from graph_runtime.executor import Executor
from graph_runtime.graph import validate
from graph_runtime.registry import REGISTRY
from graph_runtime.workflow import Workflow, is_link, load_workflow
from tests.support.model_configs import IMAGE_SIZE
from tests.support.paths import WORKFLOWS
from tests.support.tiny_models import TinyModel, reference_pipeline
from tests.support.workflows import run, shipped

SHIPPED = ["txt2img.json", "txt2img_stages.json", "img2img.json", "ddpm_unconditional.json",
           "compare_schedulers.json", "prompt_variants.json", "batch_per_image_seeds.json",
           "swap_vae.json", "efficient.json", "inpaint.json", "outpaint.json",
           "hires_fix.json", "upscale_esrgan.json"]
# Workflows for SDXL weights, which the user adds (tests/pipeline/test_sdxl_*.py run them on
# a tiny SDXL).
SDXL_SHIPPED = {"sdxl_txt2img.json": {"sd_xl_base_1.0.safetensors"},
                "sdxl_refiner.json": {"sd_xl_base_1.0.safetensors",
                                      "sd_xl_refiner_1.0.safetensors"}}
# Workflows with files trained for the embedded model (a LoRA, a ControlNet) that the test
# models cannot take: they run as shipped in their own tests.
AS_SHIPPED_ONLY = ["lora.json", "controlnet_canny.json"]


def test_every_shipped_workflow_is_listed_and_valid() -> None:
    assert sorted(p.name for p in WORKFLOWS.glob("*.json")) == sorted(
        [*SHIPPED, *SDXL_SHIPPED, *AS_SHIPPED_ONLY])
    for name in [*SHIPPED, *SDXL_SHIPPED, *AS_SHIPPED_ONLY]:
        wf = load_workflow(WORKFLOWS / name)
        assert validate(wf, REGISTRY) == [], name
        assert wf.name == name.removesuffix(".json") and len(wf.description) > 40
        sources = {nd["inputs"]["source"] for nd in wf.nodes.values()
                   if nd["type"] in ("LoadPipeline", "LoadVAE")}
        assert sources == SDXL_SHIPPED.get(name, sources), name
        assert sources <= {"noodle-tiny", "noodle-tiny-ddpm"} or name in SDXL_SHIPPED, name


@pytest.mark.parametrize("name", [*SHIPPED, *SDXL_SHIPPED, *AS_SHIPPED_ONLY])
def test_layout_flows_left_to_right_without_overlaps(name: str) -> None:
    wf = load_workflow(WORKFLOWS / name)
    boxes = {}
    for nid, nd in wf.nodes.items():
        (x, y), (w, h) = nd["ui"]["pos"], nd["ui"]["size"]
        boxes[nid] = (x, y - 30, x + w, y + h)  # the title bar sits above pos
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            ax0, ay0, ax1, ay1 = boxes[a]
            bx0, by0, bx1, by1 = boxes[b]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (name, a, b)
    for nid, nd in wf.nodes.items():
        for value in nd["inputs"].values():
            if is_link(value):
                assert boxes[value["from"]][2] < boxes[nid][0], (name, value, nid)


def shrunk(name: str, sd_dir: Path, ddpm_dir: Path) -> Workflow:
    """A shipped workflow pointed at the tiny test models, at 32 px and 2 steps."""
    wf = load_workflow(WORKFLOWS / name)
    for nd in wf.nodes.values():
        inputs = nd["inputs"]
        if nd["type"] in ("LoadPipeline", "LoadVAE"):
            inputs["source"] = str(ddpm_dir if inputs["source"].endswith("ddpm") else sd_dir)
        if nd["type"] in ("RandomLatents", "RandomPixelNoise"):
            inputs["width"] = inputs["height"] = 16 if nd["type"] == "RandomPixelNoise" else 32
        if nd["type"] == "Denoise":
            inputs["steps"] = 2
    return wf


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workflow_runs_headless(name: str, tiny_sd: TinyModel, tiny_ddpm: TinyModel,
                                        executor: Executor, tmp_path: Path) -> None:
    result = run(executor, shrunk(name, tiny_sd.folder, tiny_ddpm.folder), tmp_path)
    assert result.files and all(Path(f).is_file() for f in result.files)


def test_compare_schedulers_grid_has_six_cells(tiny_sd: TinyModel, tiny_ddpm: TinyModel,
                                               executor: Executor, tmp_path: Path) -> None:
    result = run(executor, shrunk("compare_schedulers.json", tiny_sd.folder, tiny_ddpm.folder),
                 tmp_path)
    grid = result.outputs["41"]["images"].pixels
    assert tuple(grid.shape) == (1, IMAGE_SIZE + 12, 6 * IMAGE_SIZE + 5 * 2, 3)  # + captions
    cells = [grid[0, :, k * (IMAGE_SIZE + 2): k * (IMAGE_SIZE + 2) + IMAGE_SIZE]
             for k in range(6)]
    assert len({c.numpy().tobytes() for c in cells}) == 6  # six different schedulers


def test_prompt_variants_equal_diffusers_prompt_list(tiny_sd: TinyModel, executor: Executor,
                                                     tmp_path: Path) -> None:
    """Four prompts, one latent: each prompt gets a generator seeded with the same seed,
    as diffusers' `[torch.Generator().manual_seed(1) for _ in prompts]`."""
    seed, steps = 1, 3
    wf = shipped("prompt_variants.json", [f"1.source={tiny_sd.folder}", f"4.seed={seed}",
                                          f"4.width={IMAGE_SIZE}", f"4.height={IMAGE_SIZE}",
                                          f"5.steps={steps}"])
    prompts = wf.nodes["2"]["inputs"]["text"].splitlines()
    assert len(prompts) == 4
    result = run(executor, wf, tmp_path)
    ours = result.outputs["6"]["IMAGE"].pixels.numpy()
    pipe = reference_pipeline("StableDiffusionPipeline", tiny_sd.folder)
    theirs = pipe(prompt=prompts, height=IMAGE_SIZE, width=IMAGE_SIZE,
                  num_inference_steps=steps,
                  generator=[torch.Generator("cpu").manual_seed(seed) for _ in prompts],
                  output_type="np").images
    assert float(np.abs(ours - theirs).max()) <= 1 / 255
    grid = result.outputs["7"]["images"].pixels
    assert tuple(grid.shape) == (1, IMAGE_SIZE + 12, 4 * IMAGE_SIZE + 3 * 2, 3)


@pytest.mark.parametrize("name,model", [("txt2img.json", "noodle-tiny"),
                                        ("ddpm_unconditional.json", "noodle-tiny-ddpm")])
def test_default_workflows_run_as_shipped(name: str, model: str, tmp_path: Path) -> None:
    """The embedded models make the default workflows work on a fresh checkout."""
    from nodes.loaders import BUNDLED_MODELS

    if not (BUNDLED_MODELS / model / "model_index.json").is_file():
        pytest.skip(f"models/{model} is not present")
    result = run(Executor(REGISTRY), load_workflow(WORKFLOWS / name), tmp_path)
    (png,) = result.files
    with PILImage.open(png) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert arr.std() > 10  # a picture, not a flat field
