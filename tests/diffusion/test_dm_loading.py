"""Loading pipelines from folders, names under models/, and the Hugging Face cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nodes.diffusion import hub
from nodes.diffusion.checkpoints import (
    list_models,
    load_components,
    load_scheduler_config,
    load_vae,
    resolve_source,
)
from nodes.diffusion.devices import pick_device, pick_dtype
from nodes.diffusion.hub import ModelNotFoundError
from nodes.diffusion.storage import WeightsError
from tests.support.tiny_models import TinyModel, rel_err

TOL = 1e-5


def test_diffusers_folder_matches_diffusers(tiny_sd1: TinyModel) -> None:
    pipe = tiny_sd1.pipe
    comps = load_components(tiny_sd1.folder, dtype="fp32", device="cpu")
    assert comps.kind == "sd" and comps.source == str(tiny_sd1.folder)
    assert comps.scheduler_config["_class_name"] == "PNDMScheduler"
    assert comps.scheduler_config["steps_offset"] == 1
    gen = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 16, 16, generator=gen), torch.randn(1, 9, 64, generator=gen)
    ids = comps.tokenizer(["a red circle"], padding="max_length", max_length=77,
                          truncation=True, return_tensors="pt").input_ids % 1000
    with torch.no_grad():
        assert rel_err(comps.unet(x, 999, ctx), pipe.unet(x, 999, ctx).sample) < TOL
        h = comps.text_encoder(ids).last_hidden_state
        assert rel_err(h, pipe.text_encoder(ids).last_hidden_state) < TOL
    assert not any(p.requires_grad for p in comps.unet.parameters())
    assert not comps.unet.training


def test_weights_are_private_memory_not_file_views(tiny_sd1: TinyModel) -> None:
    comps = load_components(tiny_sd1.folder, dtype="fp32", device="cpu")
    # Memory of its own, not a mapping of the file: truncating the file cannot pull pages
    # out from under the model (SIGBUS).
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc (Linux)")
    ptr = comps.unet.conv_in.weight.data_ptr()
    for line in maps.read_text().splitlines():
        low, high = (int(x, 16) for x in line.split()[0].split("-"))
        if low <= ptr < high:
            assert ".safetensors" not in line, line


def test_dtypes_and_vae_upcast(tiny_sd1: TinyModel) -> None:
    comps = load_components(tiny_sd1.folder, dtype="bf16", device="cpu")
    assert comps.unet.dtype == torch.bfloat16 and comps.vae.dtype == torch.bfloat16
    assert comps.text_encoder.dtype == torch.bfloat16
    comps = load_components(tiny_sd1.folder, dtype="fp16", device="cpu")
    assert comps.unet.dtype == torch.float16 and comps.vae.dtype == torch.float16
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype("fp8")
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        assert pick_device("auto").type in {"mps", "cpu"}
        with pytest.raises(ValueError, match="CUDA"):
            pick_device("cuda")


def test_ddpm_folder_is_unet2d(tiny_ddpm: TinyModel) -> None:
    folder, ref = tiny_ddpm.folder, tiny_ddpm.pipe.unet
    comps = load_components(folder, device="cpu")
    assert comps.kind == "unet2d"
    assert comps.tokenizer is None and comps.text_encoder is None and comps.vae is None
    assert comps.scheduler_config["_class_name"] == "DDPMScheduler"
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(comps.unet(x, 50), ref(x, 50).sample) < TOL


def test_ddpm_root_layout_and_bin_weights(tiny_ddpm: TinyModel, tmp_path: Path) -> None:
    """google/ddpm-cat-256 keeps config, .bin weights and scheduler config at its root."""
    folder, ref = tiny_ddpm.folder, tiny_ddpm.pipe.unet
    root = tmp_path / "ddpm-root"
    root.mkdir()
    shutil.copy(folder / "unet" / "config.json", root / "config.json")
    shutil.copy(folder / "scheduler" / "scheduler_config.json", root / "scheduler_config.json")
    state = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    torch.save(state, str(root / "diffusion_pytorch_model.bin"))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"]}))
    comps = load_components(root, device="cpu")
    assert comps.kind == "unet2d"
    assert comps.scheduler_config["_class_name"] == "DDPMScheduler"
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(comps.unet(x, 3), ref(x, 3).sample) < TOL


def test_list_and_resolve_models(tiny_sd1: TinyModel, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(tiny_sd1.folder, models / "my-sd")
    (models / "a.safetensors").write_bytes(b"")
    (models / "b.ckpt").write_bytes(b"")
    (models / "notes.txt").write_text("x")
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "c.safetensors").write_bytes(b"")
    (models / "org").mkdir()
    shutil.copytree(tiny_sd1.folder, models / "org" / "name")
    assert list_models(models) == ["a.safetensors", "b.ckpt", "checkpoints/c.safetensors",
                                   "my-sd", "org/name"]
    assert list_models(tmp_path / "missing") == []
    assert resolve_source("my-sd", models) == models / "my-sd"
    # A local name shadows the hub id with the same spelling.
    assert resolve_source("org/name", models) == models / "org" / "name"
    assert resolve_source(str(tiny_sd1.folder), models) == tiny_sd1.folder
    with pytest.raises(ModelNotFoundError, match="my-sd"):
        resolve_source("nothing-here", models)
    assert load_scheduler_config("my-sd", models)["_class_name"] == "PNDMScheduler"
    vae = load_vae("my-sd", models_dir=models, device="cpu", dtype="fp32")
    assert vae.config["latent_channels"] == 4


def _hub_cache(tmp_path: Path, src: Path, repo: str) -> Path:
    cache = tmp_path / "hf-cache"
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(src, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return cache


def test_hub_cache_offline(tiny_sd1: TinyModel, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _hub_cache(tmp_path, tiny_sd1.folder, "acme/tiny-sd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    comps = load_components("acme/tiny-sd", device="cpu", models_dir=tmp_path / "none")
    assert comps.kind == "sd" and comps.source == "acme/tiny-sd"
    x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 3, 64)
    with torch.no_grad():
        assert rel_err(comps.unet(x, 1, ctx), tiny_sd1.pipe.unet(x, 1, ctx).sample) < TOL
    with pytest.raises(ModelNotFoundError) as info:
        load_components("acme/not-cached", device="cpu", models_dir=tmp_path / "none")
    message = str(info.value)
    assert "acme/not-cached" in message and "HF_HUB_OFFLINE" in message
    assert "download" in message


def test_hub_download_selection() -> None:
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
             "unet/diffusion_pytorch_model.safetensors",
             "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.bin",
             "v1-5-pruned.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt"]
    wanted = set(hub._wanted_files(files))
    assert wanted == {"model_index.json", "unet/config.json", "tokenizer/vocab.json",
                      "tokenizer/merges.txt", "unet/diffusion_pytorch_model.safetensors",
                      "vae/diffusion_pytorch_model.bin"}
    assert hub.looks_like_repo_id("google/ddpm-cat-256")
    assert not hub.looks_like_repo_id("./models/x") and not hub.looks_like_repo_id("x")


def test_mismatched_weights_are_reported(tiny_sd1: TinyModel, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd1.folder, broken)
    config = json.loads((broken / "unet" / "config.json").read_text())
    config["layers_per_block"] = 1
    (broken / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="unexpected"):
        load_components(broken, device="cpu")
