"""CheckpointLoaderSimple and VAELoader: names from ComfyUI's model folders, single files
and diffusers folders, fingerprints of the files they read, clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from graph_runtime import REGISTRY, Folders
from graph_runtime.executor import Executor
from nodes.comfyui.loaders import checkpoint_loader_simple
from tests.support.ldm_export import export_single_file
from tests.support.tiny_models import TinyModel
from tests.support.workflows import link, wf


@pytest.fixture(scope="module")
def models(tiny_sd1: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ComfyUI-style models folder: one single-file checkpoint in a subfolder of
    checkpoints/, the same file as a VAE in vae/."""
    root = tmp_path_factory.mktemp("models")
    ckpt = root / "checkpoints" / "sd1" / "tiny.safetensors"
    ckpt.parent.mkdir(parents=True)
    export_single_file(tiny_sd1.pipe, ckpt)
    (root / "vae").mkdir()
    os.link(ckpt, root / "vae" / "tiny-vae.safetensors")
    return root


def load(models: Path, tmp_path: Path, nodes: dict[str, Any], target: str) -> dict[str, Any]:
    ex = Executor(REGISTRY, folders=Folders(models=models, output=tmp_path))
    result = ex.run(wf(nodes), targets=[target])
    assert result.ok, result.error
    return result.outputs[target]


def test_single_file_checkpoint_from_the_checkpoints_folder(models: Path, tmp_path: Path,
                                                            tiny_sd1: TinyModel) -> None:
    schema = REGISTRY["CheckpointLoaderSimple"].schema(Folders(models=models))
    assert "sd1/tiny.safetensors" in schema["inputs"][0]["options"]
    out = load(models, tmp_path, {
        "1": ("CheckpointLoaderSimple", {"ckpt_name": "sd1/tiny.safetensors"}),
        "2": ("VAELoader", {"vae_name": "tiny-vae.safetensors"}),
    }, "1")
    model, clip, vae = out["MODEL"], out["CLIP"], out["VAE"]
    assert model.sampling.prediction_type == "epsilon" and len(model.sampling.sigmas) == 1000
    expected = tiny_sd1.pipe.unet.state_dict()["conv_in.weight"]
    torch.testing.assert_close(model.unet.model.state_dict()["conv_in.weight"].float(),
                               expected)
    assert clip.tokenizer.model_max_length == 77 and clip.layer is None
    assert vae.scaling_factor == pytest.approx(0.18215)


def test_vae_loader_reads_the_vae_folder(models: Path, tmp_path: Path) -> None:
    out = load(models, tmp_path, {
        "1": ("CheckpointLoaderSimple", {"ckpt_name": "sd1/tiny.safetensors"}),
        "2": ("VAELoader", {"vae_name": "tiny-vae.safetensors"}),
        "3": ("EmptyLatentImage", {"width": 64, "height": 64}),
        "4": ("VAEDecode", {"samples": link("3", "LATENT"), "vae": link("2", "VAE")}),
    }, "4")
    other = load(models, tmp_path, {
        "1": ("CheckpointLoaderSimple", {"ckpt_name": "sd1/tiny.safetensors"}),
        "3": ("EmptyLatentImage", {"width": 64, "height": 64}),
        "5": ("VAEDecode", {"samples": link("3", "LATENT"), "vae": link("1", "VAE")}),
    }, "5")
    torch.testing.assert_close(out["IMAGE"].pixels, other["IMAGE"].pixels)


def test_fingerprint_follows_the_file(models: Path) -> None:
    folders = Folders(models=models)
    fingerprint = REGISTRY["CheckpointLoaderSimple"].fingerprint
    assert fingerprint is not None
    inputs = {"ckpt_name": "sd1/tiny.safetensors"}
    before = fingerprint(inputs, folders)
    path = models / "checkpoints" / "sd1" / "tiny.safetensors"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint(inputs, folders) != before
    assert fingerprint({"ckpt_name": "noodle-tiny"}, folders) != before


def test_a_checkpoint_without_text_encoder_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="CheckpointLoaderSimple: input 'ckpt_name'"):
        checkpoint_loader_simple("noodle-tiny-ddpm")
