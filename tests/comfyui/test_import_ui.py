"""Importing ComfyUI's UI format, one feature per test, on small hand-written documents:
the basics, links in both schemas, reroutes, bypassed and muted nodes. The nodes are
stand-ins with ComfyUI's shapes (`tests.support.comfy_standins`)."""

from __future__ import annotations

from typing import Any

from graph_runtime.graph import validate
from graph_runtime.workflow import import_workflow
from tests.support.comfy_standins import (
    EXPECTED_TXT2IMG,
    REG,
    find,
    imported,
    inputs_of,
    link,
    txt2img,
    ui_node,
)


# ---------------------------------------------------------------- the basics
def test_default_graph_converts_to_the_inputs_comfyui_would_send() -> None:
    result = imported(txt2img())
    assert list(result["nodes"]) == ["3", "4", "5", "6", "7", "8", "9"]
    assert inputs_of(result) == EXPECTED_TXT2IMG
    assert {nid: nd["type"] for nid, nd in result["nodes"].items()}["3"] == "KSampler"
    assert validate(import_workflow(txt2img(), REG)[0], REG) == []


def test_node_ui_data_is_kept() -> None:
    doc = txt2img()
    find(doc, 3).update(title="Sampler", color="#223", bgcolor="#335",
                        flags={"collapsed": True}, size={"0": 315, "1": 262})
    ui = imported(doc)["nodes"]["3"]["ui"]
    assert ui == {"pos": [300, 50], "size": [315, 262], "title": "Sampler", "collapsed": True,
                  "color": "#223", "bgcolor": "#335", "control_after_run": {"seed": "randomize"}}


def test_links_as_objects_in_schema_1_give_the_same_graph() -> None:
    doc = txt2img()
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    doc["links"] = [dict(zip(keys, lk, strict=True)) for lk in doc["links"]]
    doc["version"] = 1
    doc["state"] = {"lastNodeId": 9, "lastLinkId": 9, "lastGroupId": 0, "lastRerouteId": 0}
    del doc["last_node_id"], doc["last_link_id"]
    assert inputs_of(imported(doc)) == EXPECTED_TXT2IMG


def test_groups_and_viewport_go_to_the_top_level_ui() -> None:
    doc = txt2img()
    group = {"id": 1, "title": "Prompt", "bounding": [380, 20, 500, 400], "color": "#3f789e",
             "font_size": 24, "flags": {}}
    doc["groups"] = [group]
    doc["extra"] = {"ds": {"scale": 0.8, "offset": [10, -20]}}
    ui = imported(doc)["ui"]
    assert ui["groups"] == [group]
    assert ui["viewport"] == {"offset": [10, -20], "scale": 0.8}


# ---------------------------------------------------------------- reroutes
def test_reroute_nodes_pass_their_link_through() -> None:
    doc = txt2img()
    doc["links"][0] = [1, 4, 0, 20, 0, "MODEL"]
    doc["links"] += [[30, 20, 0, 21, 0, "MODEL"], [31, 21, 0, 3, 0, "MODEL"]]
    find(doc, 3)["inputs"][0]["link"] = 31
    doc["nodes"] += [ui_node(20, "Reroute", (("", "*", 1),), (("", "MODEL"),)),
                     ui_node(21, "Reroute", (("", "*", 30),), (("", "MODEL"),))]
    result = imported(doc)
    assert inputs_of(result) == EXPECTED_TXT2IMG
    assert "20" not in result["nodes"] and "21" not in result["nodes"]


def test_native_reroutes_of_schema_04_are_kept_as_ui_data() -> None:
    doc = txt2img()
    doc["extra"] = {
        "reroutes": [{"id": 1, "pos": [500, 300], "linkIds": [1]},
                     {"id": 2, "parentId": 1, "pos": [700, 300], "linkIds": [1]}],
        "linkExtensions": [{"id": 1, "parentId": 2}]}
    result = imported(doc)
    assert inputs_of(result) == EXPECTED_TXT2IMG
    assert result["ui"]["reroutes"] == [{"id": 1, "pos": [500, 300]},
                                        {"id": 2, "parentId": 1, "pos": [700, 300]}]
    assert result["nodes"]["3"]["ui"]["link_reroutes"] == {"model": 2}


def test_native_reroutes_of_schema_1_are_kept_as_ui_data() -> None:
    doc = txt2img()
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    doc["links"] = [dict(zip(keys, lk, strict=True)) for lk in doc["links"]]
    doc["links"][7]["parentId"] = 5  # VAE -> VAEDecode
    doc["version"] = 1
    doc["reroutes"] = [{"id": 5, "pos": [900, 400], "linkIds": [8]}]
    doc["floatingLinks"] = [{"id": 40, "origin_id": 4, "origin_slot": 2, "target_id": -1,
                             "target_slot": -1, "type": "VAE", "parentId": 5}]
    result = imported(doc)
    assert inputs_of(result) == EXPECTED_TXT2IMG
    assert result["ui"]["reroutes"] == [{"id": 5, "pos": [900, 400]}]
    assert result["nodes"]["8"]["ui"]["link_reroutes"] == {"vae": 5}


# ---------------------------------------------------------------- modes
def with_bypassed_lora() -> dict[str, Any]:
    """A LoraLoader (10) between the checkpoint and its consumers, bypassed."""
    doc = txt2img()
    doc["nodes"].append(ui_node(
        10, "LoraLoader", (("model", "MODEL", 20), ("clip", "CLIP", 21)),
        (("MODEL", "MODEL"), ("CLIP", "CLIP")), ["style.safetensors", 1, 1], mode=4))
    doc["links"][0] = [1, 10, 0, 3, 0, "MODEL"]
    doc["links"][2] = [3, 10, 1, 6, 0, "CLIP"]
    doc["links"][4] = [5, 10, 1, 7, 0, "CLIP"]
    doc["links"] += [[20, 4, 0, 10, 0, "MODEL"], [21, 4, 1, 10, 1, "CLIP"]]
    return doc


def test_a_bypassed_node_hands_on_its_input_of_the_same_slot() -> None:
    result = imported(with_bypassed_lora())
    assert "10" not in result["nodes"]
    assert inputs_of(result) == EXPECTED_TXT2IMG


def test_the_same_bypassed_node_runs_when_not_bypassed() -> None:
    doc = with_bypassed_lora()
    find(doc, 10)["mode"] = 0
    got = inputs_of(imported(doc))
    assert got["10"] == {"lora_name": "style.safetensors", "strength_model": 1,
                         "strength_clip": 1, "model": link("4", "MODEL"),
                         "clip": link("4", "CLIP")}
    assert got["3"]["model"] == link("10", "MODEL") and got["6"]["clip"] == link("10", "CLIP")


def test_a_bypass_falls_back_to_the_first_input_of_the_consumers_type() -> None:
    doc = txt2img()
    # Slot 0 of the bypassed node is a LATENT input, so the MODEL comes from its slot 1.
    doc["nodes"].append(ui_node(11, "SomeModelPatch", (("latent", "LATENT", 22),
                                                       ("model", "MODEL", 23)),
                                (("MODEL", "MODEL"),), mode=4))
    doc["links"][0] = [1, 11, 0, 3, 0, "MODEL"]
    doc["links"] += [[22, 5, 0, 11, 0, "LATENT"], [23, 4, 0, 11, 1, "MODEL"]]
    result = imported(doc)
    assert "11" not in result["nodes"]
    assert inputs_of(result) == EXPECTED_TXT2IMG


def test_a_bypass_prefers_the_same_slot_among_inputs_of_one_type() -> None:
    doc = txt2img()
    doc["nodes"].append(ui_node(11, "LatentPair", (("first", "LATENT", 22),
                                                   ("second", "LATENT", 23)),
                                (("A", "LATENT"), ("B", "LATENT")), mode=4))
    doc["links"][6] = [7, 11, 1, 8, 0, "LATENT"]  # VAEDecode.samples <- output B
    doc["links"] += [[22, 5, 0, 11, 0, "LATENT"], [23, 3, 0, 11, 1, "LATENT"]]
    assert inputs_of(imported(doc))["8"]["samples"] == link("3", "LATENT")
    doc["links"][6] = [7, 11, 0, 8, 0, "LATENT"]  # <- output A
    assert inputs_of(imported(doc))["8"]["samples"] == link("5", "LATENT")


def test_a_bypass_without_an_input_of_that_type_leaves_the_input_unconnected() -> None:
    doc = txt2img()
    doc["nodes"].append(ui_node(11, "MakeModel", outputs=(("MODEL", "MODEL"),), mode=4))
    doc["links"][0] = [1, 11, 0, 3, 0, "MODEL"]
    wf, _ = import_workflow(doc, REG)
    assert "model" not in wf.nodes["3"]["inputs"]
    errors = validate(wf, REG)
    assert [(e["node"], e["input"], e["code"]) for e in errors] == [
        ("3", "model", "missing_input")]


def test_a_muted_node_is_dropped_and_what_it_fed_is_missing() -> None:
    doc = txt2img()
    find(doc, 5)["mode"] = 2
    wf, _ = import_workflow(doc, REG)
    assert "5" not in wf.nodes
    assert "latent_image" not in wf.nodes["3"]["inputs"]
    assert [(e["node"], e["input"], e["code"]) for e in validate(wf, REG)] == [
        ("3", "latent_image", "missing_input")]
