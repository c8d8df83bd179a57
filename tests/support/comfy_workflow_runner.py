"""Run API-format ComfyUI prompts with ComfyUI's own nodes, as a black box.

Started as a subprocess by the parity tests and benchmark, because ComfyUI's top-level
``nodes.py`` collides with our ``nodes`` package: this process sees the oracle's folder and
installed packages only, never the repository. Usage::

    python comfy_workflow_runner.py JOB.json

JOB.json: ``{"oracle": dir, "checkpoints": dir, "out": dir, "runs": [{"name", "prompt",
"node"}, ...]}``. Each prompt is evaluated in dependency order with ComfyUI's node classes
(``NODE_CLASS_MAPPINGS``), up to ``node``, whose first output (an IMAGE, [B, H, W, C] floats
in 0..1) is written to ``<out>/<name>.npy``. A node whose class and inputs were already
evaluated in an earlier run is reused, so a checkpoint loads and a prompt encodes once; the
seconds each run took go to ``<out>/timings.json``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any


def _import_comfy_nodes(oracle: Path) -> Any:
    # Nothing of the repository may shadow ComfyUI's modules: drop this script's folder.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(oracle))
    sys.argv = [sys.argv[0], "--cpu", "--disable-all-custom-nodes"]
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 -- not installable against our torch; only imported
        stub = types.ModuleType("torchvision")
        # A spec, so packages probing for torchvision (transformers) see it as absent.
        stub.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
        stub.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.transforms"] = stub.transforms  # type: ignore[attr-defined]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    return importlib.import_module("nodes")  # ComfyUI's nodes.py, not ours


class _Evaluator:
    """Evaluates prompt nodes with ComfyUI's classes, memoised by class and inputs."""

    def __init__(self, classes: dict[str, Any]) -> None:
        self.classes = classes
        self.memo: dict[str, tuple[Any, ...]] = {}

    def key(self, prompt: dict[str, Any], node_id: str) -> str:
        node = prompt[node_id]
        inputs = {
            name: ["link", self.key(prompt, str(v[0])), v[1]] if isinstance(v, list) else v
            for name, v in node["inputs"].items()
        }
        return json.dumps([node["class_type"], inputs], sort_keys=True)

    def output(self, prompt: dict[str, Any], node_id: str) -> tuple[Any, ...]:
        key = self.key(prompt, node_id)
        if key not in self.memo:
            node = prompt[node_id]
            inputs = {
                name: self.output(prompt, str(v[0]))[v[1]] if isinstance(v, list) else v
                for name, v in node["inputs"].items()
            }
            cls = self.classes[node["class_type"]]
            self.memo[key] = tuple(getattr(cls(), cls.FUNCTION)(**inputs))
        return self.memo[key]


def main(job_path: str) -> None:
    import numpy as np
    import torch

    job = json.loads(Path(job_path).read_text())
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    comfy_nodes = _import_comfy_nodes(Path(job["oracle"]))
    import folder_paths

    folder_paths.add_model_folder_path("checkpoints", job["checkpoints"], is_default=True)
    if job.get("loras"):
        folder_paths.add_model_folder_path("loras", job["loras"], is_default=True)
    evaluator = _Evaluator(comfy_nodes.NODE_CLASS_MAPPINGS)
    timings: dict[str, float] = {}
    with torch.inference_mode():
        for run in job["runs"]:
            started = time.perf_counter()
            image = evaluator.output(run["prompt"], str(run["node"]))[0]
            np.save(out / f"{run['name']}.npy", image.float().cpu().numpy())
            timings[run["name"]] = time.perf_counter() - started
    (out / "timings.json").write_text(json.dumps(timings))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main(sys.argv[1])
