"""GET /api/model-library: the models browser's list, with sizes and families read from
safetensors headers only."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.server import create_app
from tests.support.toy_nodes import CANVAS, toy_registry

pytestmark = pytest.mark.asyncio


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.clone() for k, v in tensors.items()}, str(path))
    return path


@pytest.fixture
def library_app(run_folders: Folders) -> Any:
    from nodes.comfyui.model_library import model_library

    reg = toy_registry(CANVAS)
    reg.provide("model_library", model_library)
    return create_app(Executor(reg, folders=run_folders))


async def test_lists_kinds_sizes_and_families(aiohttp_client: Any, library_app: Any,
                                              folders: dict[str, Path]) -> None:
    models = folders["models"]
    z = torch.zeros(2, 2)
    sd1 = _write(models / "checkpoints" / "a" / "sd1.safetensors",
                 {"cond_stage_model.transformer.text_model.x": z,
                  "model.diffusion_model.input_blocks.0.0.weight": z})
    xl = _write(models / "checkpoints" / "xl.safetensors",
                {"conditioner.embedders.1.model.ln_final.weight": z})
    _write(models / "loras" / "style.safetensors", {"lora_unet_x.lora_down.weight": z})
    _write(models / "embeddings" / "bad-hands.safetensors", {"emb_params": torch.zeros(2, 768)})
    _write(models / "vae" / "ft-mse.safetensors", {"decoder.conv_in.weight": z})
    (models / "upscale_models").mkdir()
    (models / "upscale_models" / "4x.pth").write_bytes(b"\0" * 300)
    client = await aiohttp_client(library_app)
    res = await client.get("/api/model-library")
    assert res.status == 200
    got = {(m["kind"], m["name"]): m for m in (await res.json())["models"]}
    assert got["checkpoints", "a/sd1.safetensors"]["family"] == "sd1"
    assert got["checkpoints", "a/sd1.safetensors"]["size"] == sd1.stat().st_size
    assert got["checkpoints", "xl.safetensors"]["family"] == "sdxl"
    assert got["checkpoints", "xl.safetensors"]["size"] == xl.stat().st_size
    assert got["loras", "style.safetensors"]["family"] is None
    assert got["embeddings", "bad-hands.safetensors"]["family"] == "sd1"
    assert got["vae", "ft-mse.safetensors"]["source"] == "vae/ft-mse.safetensors"
    assert got["upscale_models", "4x.pth"]["size"] == 300
    # The flat models folder's own entries stay checkpoints (the conftest's diffusers folder).
    assert ("checkpoints", "tiny-model") in got or ("checkpoints", "single.safetensors") in got


async def test_a_rewritten_file_is_read_again(aiohttp_client: Any, library_app: Any,
                                              folders: dict[str, Path]) -> None:
    path = _write(folders["models"] / "checkpoints" / "m.safetensors",
                  {"cond_stage_model.transformer.x": torch.zeros(1)})
    client = await aiohttp_client(library_app)

    async def family() -> str | None:
        models = (await (await client.get("/api/model-library")).json())["models"]
        return next(m["family"] for m in models if m["name"] == "m.safetensors")

    assert await family() == "sd1"
    _write(path, {"cond_stage_model.model.x": torch.zeros(1), "pad": torch.zeros(8)})
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert await family() == "sd2"


async def test_header_only_and_no_provider(aiohttp_client: Any, app: Any,
                                           tmp_path: Path) -> None:
    from nodes.comfyui.model_library import safetensors_shapes

    # A header claiming a huge index is refused before reading it.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="not a safetensors header"):
        safetensors_shapes(bad)
    good = tmp_path / "good.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 60]}})
    good.write_bytes(len(header).to_bytes(8, "little") + header.encode())  # no weights at all
    assert safetensors_shapes(good) == {"w": (3, 5)}
    client = await aiohttp_client(app)  # the toy registry provides no model lists
    assert (await (await client.get("/api/model-library")).json()) == {"models": []}
