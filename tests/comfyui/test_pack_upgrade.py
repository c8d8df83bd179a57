"""Workflows saved before our VAEDecode, LoadImage, VAEEncode, RandomNoise and ImageBatch
made way for ComfyUI's load upgraded: renamed types, inputs and linked outputs, nothing
else touched."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import nodes  # noqa: F401  (registers the library and its upgrade)
from graph_runtime import REGISTRY
from graph_runtime.graph import validate
from graph_runtime.workflow import load_workflow
from nodes.upgrades import upgrade
from tests.support.paths import WORKFLOWS
from tests.support.workflows import link, workflow_dict

OLD = workflow_dict({
    "1": ("LoadPipeline", {"source": "noodle-tiny"}),
    "2": ("LoadImage", {"path": "workflows/images/red_circle.png"}, {"ui": {"pos": [1, 2]}}),
    "3": ("VAEEncode", {"vae": link("1", "vae"), "images": link("2", "images"), "seed": 4}),
    "4": ("TextToConditioning", {"tokenizer": link("1", "tokenizer"),
                                 "text_encoder": link("1", "text_encoder"), "text": "a"}),
    "5": ("Denoise", {"unet": link("1", "unet"), "scheduler": link("1", "scheduler"),
                      "positive": link("4", "conditioning"), "latents": link("3", "latents"),
                      "strength": 0.5}),
    "6": ("VAEDecode", {"vae": link("1", "vae"), "latents": link("5", "latents")}),
    "7": ("SaveImage", {"images": link("6", "images")}),
    "8": ("PreviewImage", {"images": link("2", "images")}),
    "9": ("RandomNoise", {"unet": link("1", "unet"), "seed": 3}),
    "10": ("ImageBatch", {"images1": link("2", "images"), "images2": link("6", "images")}),
    "11": ("PreviewImage", {"images": link("10", "images")}),
}, name="old")


def test_old_files_load_with_the_new_names() -> None:
    original = copy.deepcopy(OLD)
    wf = load_workflow(OLD)
    assert OLD == original  # the document read is not edited
    nodes_ = wf.nodes
    assert nodes_["2"]["inputs"] == {"image": "workflows/images/red_circle.png"}
    assert nodes_["2"]["ui"] == {"pos": [1, 2]}
    assert nodes_["3"]["type"] == "VAEEncodeSampled"
    assert nodes_["3"]["inputs"]["images"] == link("2", "IMAGE")
    assert nodes_["6"]["inputs"] == {"vae": link("1", "vae"), "samples": link("5", "latents")}
    assert nodes_["7"]["inputs"] == {"images": link("6", "IMAGE")}
    assert nodes_["8"]["inputs"] == {"images": link("2", "IMAGE")}
    assert nodes_["9"]["type"] == "RandomPixelNoise"
    assert nodes_["10"] == {"type": "JoinImages", "inputs": {"images1": link("2", "IMAGE"),
                                                             "images2": link("6", "IMAGE")}}
    assert nodes_["11"]["inputs"] == {"images": link("10", "images")}
    assert nodes_["5"] == OLD["nodes"]["5"] and wf.name == "old"
    assert validate(wf, REGISTRY) == []


def test_current_files_are_left_as_they_are() -> None:
    new = workflow_dict({
        "1": ("RandomNoise", {"noise_seed": 3}),
        "2": ("VAEEncode", {"pixels": link("3", "IMAGE"), "vae": link("4", "VAE")}),
        "3": ("LoadImage", {"image": "x.png"}),
        "5": ("VAEDecode", {"samples": link("2", "LATENT"), "vae": link("4", "VAE")}),
        "6": ("ImageBatch", {"image1": link("3", "IMAGE"), "image2": link("5", "IMAGE")}),
    })
    assert upgrade(new) is new
    assert load_workflow(new).to_dict() == new


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.json")), ids=lambda p: p.name)
def test_shipped_workflows_use_the_current_names(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert upgrade(doc) is doc
