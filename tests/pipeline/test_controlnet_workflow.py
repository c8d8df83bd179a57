"""workflows/controlnet_canny.json: it validates, and as shipped (the embedded model and its
canny ControlNet) the edges of the square drawn at the lower left move the prompt's shape
there: the generated shape overlaps the drawn one more than without the ControlNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graph_runtime.executor import Executor
from graph_runtime.graph import validate
from graph_runtime.registry import REGISTRY
from graph_runtime.workflow import load_workflow
from nodes.loaders import BUNDLED_MODELS
from tests.support.paths import WORKFLOWS
from tests.support.workflows import run
from tools import shapes

NAME = "controlnet_canny.json"
CONTROLNET = BUNDLED_MODELS / "controlnet" / "noodle-tiny-canny.safetensors"
SEEDS = (0, 1)


def test_workflow_validates() -> None:
    wf = load_workflow(WORKFLOWS / NAME)
    assert validate(wf, REGISTRY) == []
    types = {nd["type"] for nd in wf.nodes.values()}
    assert {"LoadImage", "CannyEdges", "LoadControlNet", "ApplyControlNet", "Denoise"} <= types


def _overlap(image: np.ndarray, control: np.ndarray) -> float:
    a, b = shapes.foreground_mask(image)[0], shapes.foreground_mask(control)[0]
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


@pytest.mark.skipif(not CONTROLNET.is_file() or not (BUNDLED_MODELS / "noodle-tiny").is_dir(),
                    reason="the embedded model or its canny ControlNet is not present")
def test_edges_steer_the_shape(tmp_path: Path) -> None:
    executor = Executor(REGISTRY)
    control = run(executor, load_workflow(WORKFLOWS / NAME), tmp_path).outputs["2"]["IMAGE"]
    drawn = (control.pixels[0].numpy() * 255).round().astype(np.uint8)
    steered, free = [], []
    for seed in SEEDS:
        wf = load_workflow(WORKFLOWS / NAME)
        wf.nodes["7"]["inputs"]["seed"] = seed
        out = run(executor, wf, tmp_path).outputs["11"]["IMAGE"].pixels[0].numpy()
        steered.append(_overlap((out * 255).round().astype(np.uint8), drawn))
        wf.nodes["10"]["inputs"]["positive"] = {"from": "4", "output": "conditioning"}
        wf.nodes["10"]["inputs"]["negative"] = {"from": "5", "output": "conditioning"}
        out = run(executor, wf, tmp_path).outputs["11"]["IMAGE"].pixels[0].numpy()
        free.append(_overlap((out * 255).round().astype(np.uint8), drawn))
    print(f"\noverlap with the drawn square: controlled {np.mean(steered):.2f}, "
          f"free {np.mean(free):.2f}")
    assert np.mean(steered) > np.mean(free) + 0.1
