"""The whole default ComfyUI workflow gives ComfyUI's image: CheckpointLoaderSimple ->
CLIPTextEncode x2 -> EmptyLatentImage -> KSampler -> VAEDecode, one API prompt run by
ComfyUI's own nodes (in a subprocess) and by ours (imported, then executed), on a
random-weight checkpoint with SD1.5's full layout that ComfyUI recognises, at 64x64 and
4 steps. The images agree within 2/255 for the samplers users pick most.

The full sampler x scheduler table is ``benchmarks/comfyui_parity.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.comfy_oracle import (
    NoodleRunner,
    default_prompt,
    oracle_available,
    pack_registered,
    run_comfy_prompts,
)
from tests.support.sd15_random import build_sd15_checkpoint, checkpoint_name

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not oracle_available(), reason="ComfyUI oracle not found"),
]

CHECKPOINT = checkpoint_name()
PAIRS = {
    "euler": ("euler", "normal"),
    "euler_ancestral": ("euler_ancestral", "normal"),
    "dpmpp_2m karras": ("dpmpp_2m", "karras"),
    "dpmpp_sde karras": ("dpmpp_sde", "karras"),
    "ddim": ("ddim", "ddim_uniform"),
    "uni_pc": ("uni_pc", "normal"),
}
SIZE = 64


def _prompt(name: str) -> dict[str, Any]:
    sampler, scheduler = PAIRS[name]
    return default_prompt(CHECKPOINT, sampler, scheduler, steps=4, size=SIZE, seed=1234)


@pytest.fixture(scope="module")
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ComfyUI-style model folder holding the random SD1.5-size checkpoint. It is kept in
    pytest's cache folder when there is one (2 GB, about 25 s to make), so later runs reuse
    it; an older version of it there is replaced."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        root = Path(cache.mkdir("comfyui-sd15-models"))
    else:
        root = tmp_path_factory.mktemp("comfyui-sd15-models")
    target = root / "checkpoints" / CHECKPOINT
    for stale in target.parent.glob("sd15_random_*.safetensors"):
        if stale != target:
            stale.unlink(missing_ok=True)
    build_sd15_checkpoint(target)
    return root


@pytest.fixture(scope="module")
def comfy_images(models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every pair run once by ComfyUI (one process, the checkpoint loaded once)."""
    prompts = {name: _prompt(name) for name in PAIRS}
    images, _ = run_comfy_prompts(prompts, models / "checkpoints", tmp_path_factory.mktemp("c"))
    return images


@pytest.fixture(scope="module")
def ours(models: Path, tmp_path_factory: pytest.TempPathFactory) -> NoodleRunner:
    if not pack_registered():
        pytest.skip("the ComfyUI node pack does not provide the default workflow's nodes yet")
    return NoodleRunner(models, tmp_path_factory.mktemp("noodle"))


@pytest.mark.parametrize("name", list(PAIRS))
def test_default_workflow_gives_comfyuis_image(
    name: str, comfy_images: dict[str, Any], ours: NoodleRunner
) -> None:
    theirs = comfy_images[name]
    assert theirs.shape == (1, SIZE, SIZE, 3)
    assert theirs.std() > 0.02, "the reference image is flat: the comparison would say nothing"
    image = ours.image(_prompt(name))
    assert image.shape == theirs.shape
    worst = float(np.abs(image - theirs).max())
    assert worst <= 2 / 255, f"{name}: max difference {worst * 255:.2f}/255"
