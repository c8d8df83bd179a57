"""workflows/lora.json on the shipped tiny model and its two shipped LoRAs: at strength 0 it
is plain txt2img; at its strengths the shape turns hollow and the white background grey, each
LoRA doing its own part; a strength change re-runs only the LoRA nodes and what they feed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from graph_runtime.cache import OutputCache
from graph_runtime.executor import Executor, RunResult
from graph_runtime.graph import validate
from graph_runtime.registry import REGISTRY
from graph_runtime.workflow import Workflow
from nodes.diffusion.lora.patching import patched, unpatched
from tests.support.paths import MODELS, WORKFLOWS
from tests.support.workflows import run, shipped
from tools import shapes

LORAS = MODELS / "loras"
OUTLINE, GREY = "noodle-tiny-outline.safetensors", "noodle-tiny-grey.safetensors"
LORA_NODES = ("8", "9")  # outline, then grey

pytestmark = pytest.mark.skipif(
    not (MODELS / "noodle-tiny" / "model_index.json").is_file()
    or not all((LORAS / n).is_file() for n in (OUTLINE, GREY)),
    reason="the shipped tiny model or its LoRAs are not present")


def lora_run(executor: Executor, out: Path, outline: float, grey: float) -> RunResult:
    """lora.json as shipped (25 PNDM steps take about a second on the tiny model) with both
    strengths of each LoRA set to one value."""
    return run(executor, shipped("lora.json", [
        f"8.strength_unet={outline}", f"8.strength_text={outline}",
        f"9.strength_unet={grey}", f"9.strength_text={grey}"]), out)


def image(result: RunResult) -> np.ndarray:
    """The decoded image as uint8 (64, 64, 3)."""
    pixels = result.outputs["6"]["IMAGE"].pixels[0].numpy()
    return (pixels * 255).round().clip(0, 255).astype(np.uint8)


def fill(img: np.ndarray) -> float:
    found = shapes.centre_fill(img)
    assert found is not None, "no shape found in the image"
    return found


@pytest.fixture(scope="module")
def executor() -> Executor:
    return Executor(REGISTRY, OutputCache())


def test_the_workflow_chains_two_shipped_loras() -> None:
    wf = shipped("lora.json")
    assert validate(wf, REGISTRY) == []
    assert wf.name == "lora" and len(wf.description) > 40
    outline, grey = (wf.nodes[n]["inputs"] for n in LORA_NODES)
    assert (outline["name"], grey["name"]) == (OUTLINE, GREY)
    assert (outline["strength_unet"], grey["strength_unet"]) == (1.0, 0.8)
    assert grey["unet"] == {"from": "8", "output": "unet"}
    assert grey["text_encoder"] == {"from": "8", "output": "text_encoder"}
    # Otherwise it is txt2img.json, with whatever used the pipeline's UNet or text encoder
    # (except the latents, which only read the UNet's shape) taking them from the LoRAs.
    plain = json.loads((WORKFLOWS / "txt2img.json").read_text())["nodes"]
    models = ({"from": "1", "output": "unet"}, {"from": "1", "output": "text_encoder"})
    for nid, node in plain.items():
        ours = wf.nodes[nid]
        assert ours["type"] == node["type"], nid
        for key, value in node["inputs"].items():
            if key == "filename_prefix":
                continue
            rewired = value in models and nid != "4"
            expected = {"from": "9", "output": value["output"]} if rewired else value
            assert ours["inputs"][key] == expected, (nid, key)


@pytest.mark.parametrize("name", [OUTLINE, GREY])
def test_shipped_files_are_small_kohya_loras(name: str) -> None:
    path = LORAS / name
    assert path.stat().st_size < 2**20
    assert (LORAS / f"training_log_{name.removesuffix('.safetensors')}.txt").is_file()
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
        rank = int(meta["ss_network_dim"])
        assert 4 <= rank <= 8 and float(meta["ss_network_alpha"]) > 0
        assert meta["ss_description"]
        stems = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in keys}
        assert any(s.startswith("lora_unet_") for s in stems)
        assert any(s.startswith("lora_te_text_model_encoder_") for s in stems)
        for stem in stems:
            down, up = f.get_tensor(f"{stem}.lora_down.weight"), f.get_tensor(
                f"{stem}.lora_up.weight")
            assert down.shape[0] == up.shape[1] == rank, stem
            assert f.get_tensor(f"{stem}.alpha").numel() == 1
        # Trained, not an untouched initialisation (kohya starts `up` at zero).
        assert max(float(f.get_tensor(f"{s}.lora_up.weight").abs().max()) for s in stems) > 0.01


def test_strength_zero_is_plain_txt2img(executor: Executor, tmp_path: Path) -> None:
    off = image(lora_run(executor, tmp_path / "off", 0.0, 0.0))
    plain = image(run(executor, shipped("txt2img.json"), tmp_path / "plain"))
    assert np.array_equal(off, plain)


def test_each_lora_does_its_part_and_both_compose(executor: Executor, tmp_path: Path) -> None:
    """The default prompt gives a filled shape on white; outline empties its middle, grey
    darkens the background, and the shipped strengths do both at once."""
    base = image(lora_run(executor, tmp_path / "base", 0.0, 0.0))
    outline = image(lora_run(executor, tmp_path / "outline", 1.0, 0.0))
    grey = image(lora_run(executor, tmp_path / "grey", 0.0, 1.0))
    both = image(run(executor, shipped("lora.json"), tmp_path / "both"))
    lum = shapes.background_luminance
    assert lum(base) > 235 and fill(base) > 0.9
    assert fill(outline) < 0.4 and lum(outline) > 200
    assert lum(grey) < 170 and fill(grey) > 0.8
    assert fill(both) < 0.4 and lum(both) < 190
    assert float(np.abs(both.astype(int) - base.astype(int)).mean()) > 20


# (component, module path, kohya stem): a 1x1 conv, the feed-forward layer our UNet reads
# through F.linear, a cross-attention key, a text encoder projection.
LAYERS = [
    ("unet", "mid_block.attentions.0.proj_in", "lora_unet_mid_block_attentions_0_proj_in"),
    ("unet", "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj",
     "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_ff_net_0_proj"),
    ("unet", "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k",
     "lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn2_to_k"),
    ("text_encoder", "encoder.layers.1.self_attn.q_proj",
     "lora_te_text_model_encoder_layers_1_self_attn_q_proj"),
]


def test_denoise_runs_base_plus_both_low_rank_products(executor: Executor,
                                                        tmp_path: Path) -> None:
    """What the LoRA chain hands on is the base weight plus 1.0 x outline's and 0.8 x grey's
    up @ down * alpha / rank, worked out here from the files' tensors."""
    result = run(executor, shipped("lora.json"), tmp_path)
    unet = result.outputs["9"]["unet"]  # the UNet wire carries its patches itself
    chains = {"unet": (unet.model, unet.patches),
              "text_encoder": unpatched(result.outputs["9"]["text_encoder"].model)}
    files = [(load_file(str(LORAS / OUTLINE)), 1.0), (load_file(str(LORAS / GREY)), 0.8)]
    for component, path, stem in LAYERS:
        base, patches = chains[component]
        assert len(patches) == 2, component
        name = path if path in dict(base.named_modules()) else f"text_model.{path}"
        original = base.get_submodule(name).weight.detach().clone()
        expected = original.clone()
        for state, strength in files:
            down, up = state[f"{stem}.lora_down.weight"], state[f"{stem}.lora_up.weight"]
            scale = float(state[f"{stem}.alpha"]) / down.shape[0]
            delta = (up.flatten(1) @ down.flatten(1)).view_as(original) * scale
            assert float(delta.abs().max()) > 1e-3, (stem, "an untrained layer")
            expected += strength * delta
        with patched(base, patches):
            merged = base.get_submodule(name).weight.detach().clone()
        torch.testing.assert_close(merged, expected, rtol=0, atol=1e-6)
        assert torch.equal(base.get_submodule(name).weight, original)  # base left as it was


def descendants(wf: Workflow, start: str) -> set[str]:
    """`start` and every node downstream of it."""
    found, grew = {start}, True
    while grew:
        grew = False
        for nid, node in wf.nodes.items():
            linked = any(isinstance(v, dict) and v.get("from") in found
                         for v in node["inputs"].values())
            if nid not in found and linked:
                found.add(nid)
                grew = True
    return found


@pytest.mark.parametrize("changed", LORA_NODES)
def test_a_strength_change_reruns_only_the_lora_and_what_it_feeds(
        changed: str, tmp_path: Path) -> None:
    ex = Executor(REGISTRY, OutputCache())
    run(ex, shipped("lora.json"), tmp_path / "first")
    events: list[dict[str, object]] = []
    changed_wf = shipped("lora.json", [f"{changed}.strength_unet=0.5"])
    result = ex.run(changed_wf, on_event=events.append, output_dir=tmp_path / "second")
    assert result.ok, result.error
    rerun = descendants(changed_wf, changed)
    assert changed in rerun and "1" not in rerun and "4" not in rerun
    assert set(result.executed) == rerun
    assert set(result.cached) == set(changed_wf.nodes) - rerun
    (started,) = [e for e in events if e["type"] == "run_started"]
    assert set(started["cached"]) == set(result.cached)  # type: ignore[arg-type]
