"""Memory modes (`--vram`, NOODLE_VRAM): in `low` each model moves to its compute device
exactly while it runs and back after, in the order the graph uses them, and the image is
`high`'s exactly; `high`, `auto` and `cpu` move nothing on a CPU-only machine.

The compute and offload devices are both the CPU here: `low` takes the same code path as
on a GPU machine (each transfer goes through `offload.move`, counted below), only the
transfers themselves cost nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from nodes import offload
from nodes.loaders import Pipeline, load_pipeline
from tests.gpu_paths.conftest import Log, txt2img
from tests.support.workflows import link, wf


def watch(log: Log, **models: torch.nn.Module) -> None:
    """Label the models and log ("name", "run") each time one runs (its forward)."""
    for name, module in models.items():
        object.__setattr__(module, "_test_label", name)
        runner = module.decoder if name == "vae" else module  # decode() runs the decoder

        def hook(*_: Any, name: str = name) -> None:
            if not log or log[-1] != (name, "run"):
                log.append((name, "run"))

        runner.register_forward_pre_hook(hook)


def load(monkeypatch: pytest.MonkeyPatch, mode: str) -> Pipeline:
    monkeypatch.setenv(offload.ENV_VAR, mode)
    return load_pipeline("noodle-tiny", dtype="fp32", device="cpu")


def on_offload_device(*modules: torch.nn.Module) -> bool:
    return all(p.device == torch.device(offload.OFFLOAD_DEVICE)
               for m in modules for p in m.parameters())


def test_low_moves_each_model_in_while_it_runs_and_matches_high(
        monkeypatch: pytest.MonkeyPatch, transfers: Log) -> None:
    high = load(monkeypatch, "high")
    _, high_image = txt2img(high)
    assert transfers == []

    low = load(monkeypatch, "low")
    models = {"text_encoder": low.text_encoder.model, "unet": low.unet.model,
              "vae": low.vae.model}
    assert all(offload.is_offloaded(m) for m in models.values())
    watch(transfers, **models)
    _, image = txt2img(low)

    encode = [("text_encoder", "compute"), ("text_encoder", "run"),
              ("text_encoder", "offload")]
    assert transfers == [*encode, *encode,  # the prompt, then the negative prompt
                         ("unet", "compute"), ("unet", "run"), ("unet", "offload"),
                         ("vae", "compute"), ("vae", "run"), ("vae", "offload")]
    assert torch.equal(image.pixels, high_image.pixels)
    # The loader's objects are still the ones the values hold, waiting offloaded.
    assert low.unet.model is models["unet"] and on_offload_device(*models.values())


def test_auto_and_cpu_move_nothing_without_an_accelerator(
        monkeypatch: pytest.MonkeyPatch, transfers: Log) -> None:
    for mode in ("auto", "cpu"):
        pipe = load(monkeypatch, mode)
        assert not offload.is_offloaded(pipe.unet.model)
        txt2img(pipe, steps=1)
    assert transfers == []
    monkeypatch.setenv(offload.ENV_VAR, "cpu")
    assert offload.placement("auto").compute == torch.device("cpu")
    monkeypatch.setenv(offload.ENV_VAR, "auto")
    assert not offload.placement("cpu").offloads
    monkeypatch.setenv(offload.ENV_VAR, "lots")
    with pytest.raises(ValueError, match="NOODLE_VRAM"):
        offload.placement()


def test_auto_offloads_what_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` keeps models on a GPU while weights plus the margin fit in its free memory."""
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 24 * gib))
    cuda = torch.device("cuda")
    assert offload.fits(4 * gib, cuda)  # 4 + max(1, 0.2 * 24) <= 10
    assert not offload.fits(6 * gib, cuda)


def test_nested_uses_move_a_model_once(monkeypatch: pytest.MonkeyPatch,
                                       transfers: Log) -> None:
    pipe = load(monkeypatch, "low")
    model = pipe.unet.model
    with pipe.unet.running(), offload.on_compute_device(model, pipe.unet.model):
        pass
    assert [where for _, where in transfers] == ["compute", "offload"]
    with pytest.raises(RuntimeError), pipe.vae.running():
        raise RuntimeError("a failing decode")
    assert [where for _, where in transfers[2:]] == ["compute", "offload"]


def test_comfyui_graph_in_low_mode_matches_high(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path, transfers: Log) -> None:
    """CheckpointLoaderSimple, CLIPTextEncode, KSampler, VAEDecode through the executor."""
    graph = wf({
        "1": ("CheckpointLoaderSimple", {"ckpt_name": "noodle-tiny"}),
        "2": ("CLIPTextEncode", {"clip": link("1", "CLIP"), "text": "a red circle"}),
        "3": ("CLIPTextEncode", {"clip": link("1", "CLIP"), "text": ""}),
        "4": ("EmptyLatentImage", {"width": 32, "height": 32, "batch_size": 1}),
        "5": ("KSampler", {"model": link("1", "MODEL"), "positive": link("2", "CONDITIONING"),
                           "negative": link("3", "CONDITIONING"),
                           "latent_image": link("4", "LATENT"), "steps": 2, "seed": 3}),
        "6": ("VAEDecode", {"samples": link("5", "LATENT"), "vae": link("1", "VAE")})})
    images = {}
    for mode in ("high", "low"):
        monkeypatch.setenv(offload.ENV_VAR, mode)
        result = Executor(REGISTRY, folders=Folders(output=tmp_path)).run(graph, targets=["6"])
        assert result.ok, result.error
        images[mode] = result.outputs["6"]["IMAGE"].pixels
    assert torch.equal(images["low"], images["high"])
    kinds = [where for _, where in transfers]
    # Two prompt encodes, one sampling run, one decode: each in and out once.
    assert kinds == ["compute", "offload"] * 4


def test_offloaded_loads_keep_the_precision_auto_gives_on_the_gpu() -> None:
    """Loading for a GPU onto the CPU first (`low`) must not turn `auto` into fp32: fp16
    for the UNet and text encoder, fp32 for a VAE whose config says force_upcast."""
    from nodes.diffusion import checkpoints
    from nodes.loaders import BUNDLED_MODELS

    where = offload.Placement("low", torch.device("cuda"))  # nothing runs: no GPU needed
    assert where.load_device == torch.device("cpu")
    comp = checkpoints.load_components(BUNDLED_MODELS / "noodle-tiny",
                                       dtype=where.load_dtype("auto"),
                                       device=where.load_device)
    assert where.settle([comp.unet, comp.vae, comp.text_encoder], "auto", vae=comp.vae) == "low"
    assert comp.unet.dtype == comp.text_encoder.dtype == torch.float16
    assert comp.vae.dtype == torch.float32
    assert offload.compute_device(comp.unet) == torch.device("cuda")
    assert next(comp.unet.parameters()).device == torch.device("cpu")


def test_a_preview_decode_brings_an_offloaded_vae_over(monkeypatch: pytest.MonkeyPatch,
                                                      transfers: Log) -> None:
    """Previews render off the sampling thread: entering like any use keeps a decode node
    that starts meanwhile from moving the VAE under the preview."""
    from nodes.previews import decode_preview

    pipe = load(monkeypatch, "low")
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with pipe.vae.running():  # a decode node running meanwhile: no move of its own
        inside = decode_preview(pipe.vae.model, sample)
    alone = decode_preview(pipe.vae.model, sample)
    assert [where for _, where in transfers] == ["compute", "offload"] * 2
    assert inside is not None and alone is not None and torch.equal(inside, alone)
