"""Importing ComfyUI's UI format, continued: primitives and converted widgets, widget value
layouts, notes, unknown node types, subgraphs and the record kept for saved PNGs."""

from __future__ import annotations

import copy

import pytest

from graph_runtime.graph import validate
from graph_runtime.workflow import WorkflowFormatError, import_workflow
from nodes.comfyui.importer import import_ui_workflow  # importing registers the importers
from tests.support.comfy_standins import (
    ENCODE,
    EXPECTED_TXT2IMG,
    REG,
    WRAP,
    converted,
    find,
    imported,
    inputs_of,
    link,
    txt2img,
    ui_node,
    with_subgraph,
    wrap_subgraph,
)


# ---------------------------------------------------------------- primitives, widgets
def test_primitive_node_values_go_into_every_target_widget() -> None:
    doc = txt2img()
    doc["nodes"] += [
        {"id": 12, "type": "PrimitiveNode", "pos": [0, 0], "size": [300, 160], "mode": 0,
         "inputs": [], "outputs": [{"name": "STRING", "type": "STRING",
                                    "widget": {"name": "text"}, "links": [40, 41]}],
         "title": "Prompt", "properties": {"Run widget replace on values": False},
         "widgets_values": ["a red cube"]},
        {"id": 13, "type": "PrimitiveNode", "pos": [0, 200], "size": [210, 82], "mode": 0,
         "inputs": [], "outputs": [{"name": "INT", "type": "INT", "widget": {"name": "steps"},
                                    "links": [42]}],
         "properties": {}, "widgets_values": [9, "fixed"]}]
    find(doc, 6)["inputs"].append(converted("text", "STRING", 40))
    find(doc, 7)["inputs"].append(converted("text", "STRING", 41))
    find(doc, 3)["inputs"].append(converted("steps", "INT", 42))
    doc["links"] += [[40, 12, 0, 6, 1, "STRING"], [41, 12, 0, 7, 1, "STRING"],
                     [42, 13, 0, 3, 4, "INT"]]
    got = inputs_of(imported(doc))
    assert got["6"]["text"] == got["7"]["text"] == "a red cube"  # the stale values lose
    assert got["3"]["steps"] == 9
    assert "12" not in got and "13" not in got


def test_a_converted_widget_takes_its_link_and_an_unlinked_one_its_value() -> None:
    doc = txt2img()
    doc["nodes"].append(ui_node(13, "SeedGenerator", outputs=(("INT", "INT"),), widgets=[7]))
    find(doc, 3)["inputs"] += [converted("seed", "INT", 50), converted("cfg", "FLOAT", None)]
    doc["links"].append([50, 13, 0, 3, 4, "INT"])
    got = inputs_of(imported(doc))
    assert got["3"]["seed"] == link("13", "output0")
    assert got["3"]["cfg"] == 7.5


def test_seed_control_values_are_skipped_whatever_their_form() -> None:
    doc = txt2img()
    find(doc, 3)["widgets_values"] = [42, True, 4, 7.5, "euler", "karras", 1]
    result = imported(doc)
    assert inputs_of(result) == EXPECTED_TXT2IMG
    assert "control_after_run" not in result["nodes"]["3"]["ui"]
    find(doc, 3)["widgets_values"] = [42, 4, 7.5, "euler", "karras", 1]  # none saved
    assert inputs_of(imported(doc)) == EXPECTED_TXT2IMG


def test_ksampler_advanced_widget_layout() -> None:
    doc = txt2img()
    find(doc, 3)["type"] = "KSamplerAdvanced"
    find(doc, 3)["widgets_values"] = ["enable", 721897303308196, "randomize", 25, 8, "euler",
                                      "normal", 0, 20, "enable"]
    result = imported(doc)
    got = result["nodes"]["3"]
    assert {k: v for k, v in got["inputs"].items() if not isinstance(v, dict)} == {
        "add_noise": "enable", "noise_seed": 721897303308196, "steps": 25, "cfg": 8,
        "sampler_name": "euler", "scheduler": "normal", "start_at_step": 0,
        "end_at_step": 20, "return_with_leftover_noise": "enable"}
    assert got["ui"]["control_after_run"] == {"noise_seed": "randomize"}


def test_extra_trailing_values_are_ignored_and_missing_ones_defaulted() -> None:
    doc = txt2img()
    find(doc, 3)["widgets_values"] = [42, "fixed", 4, 7.5, "euler", "karras", 1, ""]
    assert inputs_of(imported(doc)) == EXPECTED_TXT2IMG
    find(doc, 3)["widgets_values"] = [42, "fixed", 4]
    got = inputs_of(imported(doc))["3"]
    assert (got["cfg"], got["sampler_name"], got["scheduler"], got["denoise"]) == (
        8.0, "euler", "normal", 1.0)
    del find(doc, 9)["widgets_values"]
    assert inputs_of(imported(doc))["9"]["filename_prefix"] == "ComfyUI"


def test_the_upload_button_value_after_load_image_is_skipped() -> None:
    doc = txt2img()
    doc["nodes"].append(ui_node(10, "LoadImage", outputs=(("IMAGE", "IMAGE"), ("MASK", "MASK")),
                                widgets=["photo.png", "image", ""]))
    assert inputs_of(imported(doc))["10"] == {"image": "photo.png"}


def test_widget_values_saved_as_a_dict_are_read_by_name() -> None:
    doc = txt2img()
    find(doc, 3)["widgets_values"] = {"seed": 42, "steps": 4, "cfg": 7.5,
                                      "scheduler": "karras", "denoise": 1}
    assert inputs_of(imported(doc)) == EXPECTED_TXT2IMG


# ---------------------------------------------------------------- notes, unknown types
def test_notes_are_not_nodes_but_their_text_is_kept() -> None:
    doc = txt2img()
    doc["nodes"] += [ui_node(14, "Note", widgets=["plain words"], title="Read me"),
                     ui_node(15, "MarkdownNote", widgets=["# Title"])]
    result = imported(doc)
    assert "14" not in result["nodes"] and "15" not in result["nodes"]
    assert result["ui"]["notes"] == [
        {"title": "Read me", "text": "plain words", "markdown": False, "pos": [1400, 50],
         "size": [300, 120]},
        {"title": "MarkdownNote", "text": "# Title", "markdown": True, "pos": [1500, 50],
         "size": [300, 120]}]


def test_unknown_classes_stay_nodes_and_fail_validation_one_error_each() -> None:
    doc = txt2img()
    doc["nodes"] += [ui_node(20, "FancyModelLoader", outputs=(("MODEL", "MODEL"),),
                             widgets=["big.safetensors", 3]),
                     ui_node(21, "FancyUpscaler", (("image", "IMAGE", 60),),
                             widgets={"factor": 2, "mode": "lanczos"})]
    doc["links"][0] = [1, 20, 0, 3, 0, "MODEL"]
    doc["links"].append([60, 8, 0, 21, 0, "IMAGE"])
    wf, _ = import_workflow(doc, REG)
    assert wf.nodes["20"]["type"] == "FancyModelLoader"
    assert wf.nodes["20"]["comfyui"] == {"widgets_values": ["big.safetensors", 3]}
    assert wf.nodes["21"]["inputs"] == {"factor": 2, "mode": "lanczos",
                                        "image": link("8", "IMAGE")}
    assert wf.nodes["3"]["inputs"]["model"] == link("20", "output0")
    errors = validate(wf, REG)
    assert [(e["node"], e["code"]) for e in errors] == [("20", "unknown_node_type"),
                                                        ("21", "unknown_node_type")]
    assert "FancyModelLoader" in errors[0]["message"] and "FancyUpscaler" in errors[1]["message"]



def test_a_subgraph_is_flattened_with_instance_prefixed_ids() -> None:
    result = imported(with_subgraph(ENCODE))
    assert "6" not in result["nodes"]
    inner = result["nodes"]["6:1"]
    assert inner["type"] == "CLIPTextEncode"
    assert inner["inputs"] == {"text": "inside", "clip": link("4", "CLIP")}
    assert inner["ui"]["pos"] == [1000, 500]  # the inner layout moved onto the instance
    assert result["nodes"]["3"]["inputs"]["positive"] == link("6:1", "CONDITIONING")
    assert result["ui"]["groups"] == [{"title": "Inner", "bounding": [990, 490, 320, 140],
                                       "flags": {}}]
    expected = {**EXPECTED_TXT2IMG, "3": {**EXPECTED_TXT2IMG["3"],
                                          "positive": link("6:1", "CONDITIONING")}}
    del expected["6"]
    assert {k: v for k, v in inputs_of(result).items() if k != "6:1"} == expected


def test_nested_subgraphs_give_nested_ids() -> None:
    result = imported(with_subgraph(WRAP))
    assert result["nodes"]["6:2:1"]["inputs"] == {"text": "inside", "clip": link("4", "CLIP")}
    assert result["nodes"]["3"]["inputs"]["positive"] == link("6:2:1", "CONDITIONING")
    assert not {"6", "6:2"} & set(result["nodes"])


def test_a_subgraph_that_contains_itself_is_an_error() -> None:
    doc = with_subgraph(WRAP)
    looping = wrap_subgraph()
    looping["nodes"][0]["type"] = WRAP
    doc["definitions"]["subgraphs"][1] = looping
    with pytest.raises(WorkflowFormatError, match="contains itself"):
        import_workflow(doc, REG)


# ---------------------------------------------------------------- the record for PNGs
def test_the_api_prompt_and_the_ui_document_are_recorded() -> None:
    doc = txt2img()
    result = imported(copy.deepcopy(doc))
    assert result["comfyui"]["extra_pnginfo"] == {"workflow": doc}
    prompt = result["comfyui"]["prompt"]
    assert prompt["3"] == {
        "class_type": "KSampler",
        "inputs": {"seed": 42, "steps": 4, "cfg": 7.5, "sampler_name": "euler",
                   "scheduler": "karras", "denoise": 1, "model": ["4", 0],
                   "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]},
        "_meta": {"title": "KSampler"}}
    assert prompt["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}
    assert prompt["9"]["_meta"] == {"title": "Save Image"}


def test_a_malformed_document_says_where() -> None:
    doc = txt2img()
    doc["links"][3] = [4, 6, "zero", 3, 1, "CONDITIONING"]
    with pytest.raises(WorkflowFormatError, match=r"links\[3\]"):
        import_ui_workflow(doc, REG)
    doc = txt2img()
    del find(doc, 8)["type"]
    with pytest.raises(WorkflowFormatError, match=r"nodes\[5\]"):
        import_ui_workflow(doc, REG)
