"""`noodle --help`, `validate` and `nodes` read only the nodes' signatures, so they must not
import torch, transformers or the model code: those cost seconds and hundreds of
megabytes. Checked in a fresh interpreter, where nothing else has imported them yet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nodes.lazy import LazyModule, lazy_module

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "safetensors", "kornia", "numpy", "diffusers", "tokenizers",
         "huggingface_hub", "nodes.diffusion.unet", "nodes.diffusion.checkpoints",
         "nodes.diffusion.schedulers", "nodes.diffusion.ksampling")

# Runs the command in-process and reports what it imported: exit code and heavy modules.
PROBE = """
import contextlib, io, json, sys
from graph_runtime.cli import main
heavy = {heavy!r}
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main({argv!r})
    except SystemExit as exc:
        code = exc.code
loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
print(json.dumps({{"code": code, "loaded": loaded, "chars": len(out.getvalue())}}))
"""


def probe(*argv: str) -> dict:
    script = PROBE.format(heavy=HEAVY, argv=list(argv))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("argv", [
    ("--help",),
    ("nodes",),
    ("nodes", "--json"),
    ("validate", "workflows/txt2img.json"),
    ("validate", "workflows/lora.json", "--set", "8.strength_unet=0.5"),
    ("validate", "workflows/controlnet_canny.json"),
    ("validate", "workflows/sdxl_txt2img.json"),
    ("validate", "workflows/upscale_esrgan.json"),
    ("validate", "tests/comfyui/data/default_api.json"),  # through the ComfyUI importer
])
def test_reading_commands_import_no_model_code(argv: tuple[str, ...]) -> None:
    result = probe(*argv)
    assert result["code"] == 0
    assert result["chars"] > 0  # it did report something
    assert result["loaded"] == []


def test_an_invalid_workflow_is_reported_without_torch(tmp_path: Path) -> None:
    wf = json.loads((REPO / "workflows" / "txt2img.json").read_text())
    node = next(n for n in wf["nodes"].values() if n["type"] == "LoadPipeline")
    node["inputs"]["dtype"] = "fp13"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(wf))
    result = probe("validate", str(bad), "--json")
    assert result["code"] == 2 and result["loaded"] == []


def test_lazy_module_imports_on_first_use() -> None:
    json_module = lazy_module("json")
    assert isinstance(json_module, LazyModule) and "not imported" in repr(json_module)
    assert json_module.dumps([1]) == "[1]"
    assert "(imported)" in repr(json_module)
    missing = lazy_module("noodle_no_such_module")
    with pytest.raises(ModuleNotFoundError):
        missing.anything  # noqa: B018 - the attribute read is what imports


def test_choice_names_match_the_registries_behind_them() -> None:
    """The torch-free name lists the schemas offer are the implementations' own lists."""
    from nodes.diffusion import names, prediction_type, schedulers
    from nodes.diffusion.ksampling import samplers, schedules

    assert names.SCHEDULER_NAMES == tuple(schedulers.SCHEDULERS)
    assert names.KSAMPLER_NAMES == samplers.SAMPLER_NAMES
    assert names.KSCHEDULER_NAMES == schedules.SCHEDULER_NAMES
    assert prediction_type.PREDICTION_TYPES is names.PREDICTION_TYPES
