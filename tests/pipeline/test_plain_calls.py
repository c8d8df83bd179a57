"""Nodes are plain functions: called directly, with their real defaults, they compute what the
graph computes; and the example node of docs/writing-nodes.md works as written."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import torch

import graph_runtime
from graph_runtime import Folders, Registry, node
from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from nodes.comfyui.vae import vae_decode
from nodes.latents import random_latents
from nodes.loaders import load_pipeline
from nodes.sampling import denoise
from nodes.text import text_to_conditioning
from nodes.types import Image, Mask
from tests.support.paths import REPO
from tests.support.workflows import link, wf


def test_a_pipeline_of_plain_calls_equals_the_graph(tmp_path: Path) -> None:
    pipe = load_pipeline("noodle-tiny", dtype="fp32", device="cpu")
    positive = text_to_conditioning(pipe.tokenizer, pipe.text_encoder, "a red circle")
    latents = random_latents(pipe.unet, pipe.vae, seed=7)
    images = vae_decode(denoise(pipe.unet, pipe.scheduler, positive, latents=latents,
                                steps=3), pipe.vae)

    graph = wf({
        "1": ("LoadPipeline", {"dtype": "fp32", "device": "cpu"}),
        "2": ("TextToConditioning", {
            "tokenizer": link("1", "tokenizer"), "text_encoder": link("1", "text_encoder"),
            "text": "a red circle"}),
        "3": ("RandomLatents", {"unet": link("1", "unet"), "vae": link("1", "vae"),
                                "seed": 7}),
        "4": ("Denoise", {
            "unet": link("1", "unet"), "scheduler": link("1", "scheduler"),
            "positive": link("2", "conditioning"), "latents": link("3", "latents"),
            "steps": 3}),
        "5": ("VAEDecode", {"samples": link("4", "latents"), "vae": link("1", "vae")})})
    result = Executor(REGISTRY, folders=Folders(output=tmp_path)).run(graph, targets=["5"])
    assert result.ok, result.error
    assert torch.equal(result.outputs["5"]["IMAGE"].pixels, images.pixels)


def test_widget_defaults_are_the_functions_own() -> None:
    for name in REGISTRY:
        definition = REGISTRY[name]
        params = inspect.signature(definition.func).parameters
        for spec in definition.inputs.values():
            if spec.widget is not None:
                assert params[spec.name].default == spec.default, (name, spec.name)
    assert inspect.signature(denoise).parameters["steps"].default == 20


def _doc_example() -> str:
    text = (REPO / "docs" / "writing-nodes.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_the_documented_example_node_works(monkeypatch: Any, tmp_path: Path) -> None:
    reg = Registry()
    for socket in REGISTRY.socket_types.values():
        reg.add_socket_type(socket)
    monkeypatch.setattr(graph_runtime, "node", lambda *a, **k: node(*a, **k, registry=reg))
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(_doc_example(), "writing-nodes.md", "exec"), namespace)  # noqa: S102
    adjust = namespace["adjust_image"]
    schema = reg["AdjustImage"].schema()
    assert [i["name"] for i in schema["inputs"]] == ["images", "mask", "brightness",
                                                      "contrast", "mode"]
    assert schema["inputs"][2]["default"] == 1.0 and schema["inputs"][2]["max"] == 4.0

    pixels = torch.full((1, 4, 4, 3), 0.25)
    brighter = adjust(Image(pixels), brightness=2.0)
    assert torch.allclose(brighter.pixels, torch.full_like(pixels, 0.5))
    half = torch.zeros(1, 4, 4)
    half[:, :, 2:] = 1.0
    masked = adjust(Image(pixels), Mask(half), brightness=2.0)
    assert torch.allclose(masked.pixels[:, :, :2], pixels[:, :, :2])
    assert torch.allclose(masked.pixels[:, :, 2:], torch.full((1, 4, 2, 3), 0.5))
