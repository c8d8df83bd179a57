"""LoRAs and the content-addressed cache: a LoRA never changes the cached base model, a
strength change re-runs only the LoRA nodes and what follows them without reading the file
again, and three stacked LoRAs cost their own tensors, not copies of the UNet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import nodes.diffusion.lora.file as lora_file
from graph_runtime import Folders
from graph_runtime.cache import OutputCache
from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from nodes.diffusion.checkpoints import load_components
from tests.pipeline.test_lora_parity import lora_workflow
from tests.support.lora_files import write_kohya_lora, write_peft_lora
from tests.support.tiny_models import TinyModel
from tests.support.workflows import run

DOWNSTREAM = {"4", "6", "8", "9", "10"}  # text encodings, Denoise, decode, save


@pytest.fixture
def loras(tiny_sd: TinyModel, tmp_path: Path) -> Path:
    """A models folder with three LoRA files for the tiny SD model."""
    models = tmp_path / "models"
    comp = load_components(tiny_sd.folder)
    write_kohya_lora(models / "loras" / "a.safetensors", comp, rank=4, seed=1)
    write_peft_lora(models / "loras" / "b.safetensors", comp, rank=2, seed=2)
    write_kohya_lora(models / "loras" / "c.safetensors", comp, rank=8, alpha=4.0, seed=3)
    return models


def _image(result: Any) -> np.ndarray:
    return result.outputs["9"]["IMAGE"].pixels.numpy()


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_base_model_is_bit_identical_after_a_lora_run(tiny_sd: TinyModel, loras: Path,
                                                      tmp_path: Path) -> None:
    ex = Executor(REGISTRY, OutputCache({"cpu": None}), Folders(models=loras))
    base_wf = lora_workflow(tiny_sd.folder, [])
    first = run(ex, base_wf, tmp_path / "1")
    pipeline = first.outputs["1"]
    unet, text = pipeline["unet"].model, pipeline["text_encoder"].model
    before = {"unet": _snapshot(unet), "text": _snapshot(text)}
    with_lora = run(ex, lora_workflow(tiny_sd.folder, [("a.safetensors", 1.0)]),
                    tmp_path / "2")
    assert float(np.abs(_image(with_lora) - _image(first)).max()) > 0.05
    # The LoRA run used the cached loader, and left its modules exactly as they were.
    assert "1" in with_lora.cached
    for name, module in (("unet", unet), ("text", text)):
        after = module.state_dict()
        assert after.keys() == before[name].keys()
        assert all(torch.equal(after[k], before[name][k]) for k in after)
    # Recompute everything after the loader from the same cached modules: bit-identical.
    keep = first.signatures["1"]
    for key in ex.cache.keys():
        if key != keep:
            ex.cache.discard(key)
    again = run(ex, base_wf, tmp_path / "3")
    assert again.cached == ["1"] and "8" in again.executed
    assert np.array_equal(_image(again), _image(first))


def test_a_strength_change_reruns_only_the_lora_and_what_follows(
        tiny_sd: TinyModel, loras: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    real_read = lora_file.read_lora

    def counting_read(path: Path) -> dict[str, torch.Tensor]:
        reads.append(Path(path))
        return real_read(path)

    monkeypatch.setattr(lora_file, "read_lora", counting_read)
    ex = Executor(REGISTRY, OutputCache({"cpu": None}), Folders(models=loras))
    stack = [("a.safetensors", 1.0), ("b.safetensors", 0.7)]
    first = run(ex, lora_workflow(tiny_sd.folder, stack), tmp_path / "1")
    assert [p.name for p in reads] == ["a.safetensors", "b.safetensors"]
    changed = run(ex, lora_workflow(tiny_sd.folder, [("a.safetensors", 1.0),
                                                     ("b.safetensors", 0.3)]), tmp_path / "2")
    assert set(changed.executed) == {"21"} | DOWNSTREAM
    assert len(reads) == 2  # the file's tensors came from the cache
    assert float(np.abs(_image(changed) - _image(first)).max()) > 0.01
    # The first LoRA's strength: both LoRA nodes run again, the loader does not.
    again = run(ex, lora_workflow(tiny_sd.folder, [("a.safetensors", 0.5),
                                                   ("b.safetensors", 0.3)]), tmp_path / "3")
    assert set(again.executed) == {"20", "21"} | DOWNSTREAM
    assert "1" in again.cached and len(reads) == 2
    # Editing the file on disk is noticed although the workflow did not change.
    comp = load_components(tiny_sd.folder)
    write_kohya_lora(loras / "loras" / "a.safetensors", comp, rank=4, seed=9)
    edited = run(ex, lora_workflow(tiny_sd.folder, [("a.safetensors", 0.5),
                                                    ("b.safetensors", 0.3)]), tmp_path / "4")
    assert "20" in edited.executed and len(reads) == 3


def _storages(obj: Any, seen: set[int], found: dict[int, int]) -> None:
    """Bytes of every distinct tensor storage reachable from a cached value."""
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        found[storage.data_ptr()] = storage.nbytes()
        return
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        for t in [*obj.parameters(), *obj.buffers()]:
            _storages(t, seen, found)
        return
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    elif hasattr(obj, "__dataclass_fields__"):
        items = [getattr(obj, f) for f in obj.__dataclass_fields__]
    elif hasattr(obj, "__dict__"):
        items = list(vars(obj).values())
    else:
        return
    for item in items:
        _storages(item, seen, found)


def _cached_bytes(ex: Executor) -> int:
    found: dict[int, int] = {}
    seen: set[int] = set()
    for key in ex.cache.keys():
        entry = ex.cache.get(key)
        assert entry is not None
        _storages(entry.outputs, seen, found)
    return sum(found.values())


def test_three_stacked_loras_cost_their_own_size(tiny_sd: TinyModel, loras: Path,
                                                 tmp_path: Path) -> None:
    ex = Executor(REGISTRY, OutputCache({"cpu": None}), Folders(models=loras))
    targets = ["1", "20", "21", "22"]  # the loader and the three LoRA nodes, nothing after
    stack = [("a.safetensors", 1.0), ("b.safetensors", 0.5), ("c.safetensors", -0.5)]
    base = ex.run(lora_workflow(tiny_sd.folder, []), targets=["1"], output_dir=tmp_path)
    assert base.ok
    base_bytes = _cached_bytes(ex)
    result = ex.run(lora_workflow(tiny_sd.folder, stack), targets=targets,
                    output_dir=tmp_path)
    assert result.ok, result.error
    lora_bytes = sum(t.nelement() * t.element_size()
                     for name, _ in stack
                     for t in lora_file.read_lora(loras / "loras" / name).values())
    total = _cached_bytes(ex)
    print(f"\nbase {base_bytes} B, three LoRAs {lora_bytes} B, cached {total} B "
          f"(+{(total - base_bytes) / lora_bytes:.3f} x the LoRAs)")
    assert total - base_bytes <= 1.1 * lora_bytes
    # The cache's own accounting counts a patched model by its patches, not the base again.
    pipeline_size = ex.cache.get(base.signatures["1"]).sizes["cpu"]
    for nid in ("20", "21", "22"):
        assert ex.cache.get(result.signatures[nid]).sizes["cpu"] < pipeline_size / 2


def test_unknown_keys_are_a_node_error_that_lists_them(tiny_sd: TinyModel, loras: Path,
                                                       tmp_path: Path) -> None:
    save_file({"lora_unet_no_such_layer.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_no_such_layer.lora_up.weight": torch.zeros(4, 2)},
              str(loras / "loras" / "broken.safetensors"))
    ex = Executor(REGISTRY, OutputCache({"cpu": None}), Folders(models=loras))
    result = ex.run(lora_workflow(tiny_sd.folder, [("broken.safetensors", 1.0)]),
                    output_dir=tmp_path)
    assert not result.ok and result.error is not None
    assert result.error["node"] == "20"
    assert "'name'" in result.error["message"]
    assert "lora_unet_no_such_layer" in result.error["message"]
    # The loader's result stays cached for the next run.
    assert "1" in result.executed and result.signatures["1"] in ex.cache
