"""ComfyUI's own templates (package `comfyui-workflow-templates` 0.1.3) import with the real
node library: every SD-family one (SD1.x, SD2.x, SDXL, listed with the reason for each in
`tools.comfy_templates.FAMILY`), node for node and link for link against its UI document.
Running them is `test_templates_run`'s job."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("comfyui_workflow_templates")

from graph_runtime.graph import validate  # noqa: E402
from graph_runtime.registry import REGISTRY, Registry  # noqa: E402
from graph_runtime.workflow import dumps, import_workflow, load_workflow  # noqa: E402
from tools.comfy_templates import FAMILY, templates_dir  # noqa: E402

FRONT_END_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# Choices listing files (models, input images): the templates name files we do not have.
FILE_INPUTS = {"ckpt_name", "vae_name", "lora_name", "control_net_name", "image",
               "model_name", "clip_name", "gligen_name", "unet_name", "style_model_name"}


@pytest.fixture(scope="module")
def library() -> Registry:
    import nodes  # noqa: F401  (registers the node library, the ComfyUI pack with it)
    import nodes.comfyui.importer  # noqa: F401

    return REGISTRY


def template(name: str) -> dict[str, Any]:
    return json.loads((templates_dir() / f"{name}.json").read_text(encoding="utf-8"))


def output_name(registry: Registry, kind: str, slot: int) -> str:
    definition = registry.get(kind)
    return definition.outputs[slot].name if definition is not None else f"output{slot}"


def test_the_family_list_holds_every_sd_family_template() -> None:
    names = {p.stem for p in templates_dir().glob("*.json")}
    sd_checkpoints = set()
    for name in names - {"index"}:
        for n in template(name)["nodes"]:
            values = n.get("widgets_values") or [""]
            if n["type"] == "CheckpointLoaderSimple" and any(
                    key in str(values[0]).lower() for key in ("v1-5", "sd_xl", "v2-1")):
                sd_checkpoints.add(name)
    assert sd_checkpoints <= set(FAMILY)
    assert set(FAMILY) <= names


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_template_imports_node_for_node_and_link_for_link(name: str, library: Registry) -> None:
    doc = template(name)
    wf, kind = import_workflow(doc, library)
    assert kind == "comfyui-ui"
    by_id = {str(n["id"]): n for n in doc["nodes"]}
    real = {nid: n for nid, n in by_id.items()
            if n["type"] not in FRONT_END_ONLY and n.get("mode", 0) not in (2, 4)}
    assert {nid: nd["type"] for nid, nd in wf.nodes.items()} == {
        nid: n["type"] for nid, n in real.items()}
    checked = 0
    for _, origin, slot, target, target_slot, _ in doc["links"]:
        if str(target) not in real:
            continue
        entry = by_id[str(target)]["inputs"][target_slot]
        input_name = (entry.get("widget") or {}).get("name") or entry["name"]
        value = wf.nodes[str(target)]["inputs"].get(input_name)
        source = by_id[str(origin)]
        if source["type"] == "PrimitiveNode":
            assert value == source["widgets_values"][0], (target, input_name)
        elif str(origin) in real:
            assert value == {"from": str(origin),
                             "output": output_name(library, source["type"], slot)}, (
                target, input_name)
        checked += 1
    assert checked > 0
    for error in validate(wf, library):
        # Files the template names that this machine does not have: models, images and
        # embeddings (a prompt's `embedding:name`).
        assert error["code"] == "unknown_node_type" or (
            error["code"] == "invalid_choice" and error["input"] in FILE_INPUTS) or (
            error["code"] == "invalid_combination" and error["input"] == "text"
            and "unknown embedding" in error["message"]), error


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_template_round_trips_through_our_format(name: str, library: Registry) -> None:
    wf, _ = import_workflow(template(name), library)
    assert load_workflow(dumps(wf)) == wf


def test_default_template_values_are_comfyuis(library: Registry) -> None:
    if "KSampler" not in library:
        pytest.skip("the ComfyUI node pack is not registered")
    wf, _ = import_workflow(template("default"), library)
    literals = {nid: {k: v for k, v in nd["inputs"].items() if not isinstance(v, dict)}
                for nid, nd in wf.nodes.items()}
    assert literals["3"] == {"seed": 156680208700286, "steps": 20, "cfg": 8,
                             "sampler_name": "euler", "scheduler": "normal", "denoise": 1}
    assert literals["5"] == {"width": 512, "height": 512, "batch_size": 1}
    assert literals["4"] == {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}
    assert literals["7"] == {"text": "text, watermark"}
    assert wf.nodes["8"]["inputs"] == {"samples": {"from": "3", "output":
                                                   output_name(library, "KSampler", 0)},
                                       "vae": {"from": "4", "output":
                                               output_name(library, "CheckpointLoaderSimple", 2)}}
