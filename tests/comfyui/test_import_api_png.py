"""Importing ComfyUI's API format and PNGs, the engine's importer hook, reading files, and
round trips through our own format. Nodes are the stand-ins of `test_import_ui`."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from graph_runtime import workflow as workflow_module
from graph_runtime.graph import validate
from graph_runtime.workflow import (
    WorkflowFormatError,
    dumps,
    from_dict,
    import_workflow,
    load_workflow,
    load_workflow_file,
    png_text_chunks,
)
from nodes.comfyui.importer import api_prompt
from tests.support.comfy_standins import (
    ENCODE,
    REG,
    find,
    link,
    txt2img,
    with_subgraph,
)

API_PROMPT: dict[str, Any] = {
    "3": {"class_type": "KSampler",
          "inputs": {"seed": 5, "steps": 4, "cfg": 8, "sampler_name": "euler",
                     "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                     "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]},
          "_meta": {"title": "KSampler"}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"},
          "_meta": {"title": "Load Checkpoint"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                       "batch_size": 1},
          "_meta": {"title": "Empty Latent Image"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]},
          "_meta": {"title": "Positive"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]},
          "_meta": {"title": "Negative"}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]},
          "_meta": {"title": "VAE Decode"}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "api", "images": ["8", 0]},
          "_meta": {"title": "Save Image"}},
}


def api() -> dict[str, Any]:
    return copy.deepcopy(API_PROMPT)


# ---------------------------------------------------------------- API format
def test_api_prompt_keeps_ids_names_links_and_titles() -> None:
    wf, kind = import_workflow(api(), REG)
    assert kind == "comfyui-api"
    assert list(wf.nodes) == list(API_PROMPT)
    assert wf.nodes["6"]["inputs"] == {"text": "a cat", "clip": link("4", "CLIP")}
    assert wf.nodes["8"]["inputs"] == {"samples": link("3", "LATENT"), "vae": link("4", "VAE")}
    assert wf.nodes["4"]["ui"]["title"] == "Load Checkpoint"
    assert wf.extra["comfyui"] == {"prompt": API_PROMPT, "extra_pnginfo": {}}
    assert validate(wf, REG) == []


def test_api_nodes_are_laid_out_left_to_right_by_depth() -> None:
    wf, _ = import_workflow(api(), REG)
    x = {nid: nd["ui"]["pos"][0] for nid, nd in wf.nodes.items()}
    assert x["4"] == x["5"] < x["6"] == x["7"] < x["3"] < x["8"] < x["9"]
    positions = [tuple(nd["ui"]["pos"]) for nd in wf.nodes.values()]
    assert len(set(positions)) == len(positions)


def test_api_literal_lists_are_unwrapped() -> None:
    prompt = {"1": {"class_type": "Curve", "inputs": {"points": {"__value__": [[0, 0], [1, 1]]},
                                                      "pair": [1, 2.5]}}}
    wf, _ = import_workflow(prompt, REG)
    assert wf.nodes["1"]["inputs"] == {"points": [[0, 0], [1, 1]], "pair": [1, 2.5]}
    assert api_prompt(wf.nodes, REG)["1"]["inputs"]["points"] == {"__value__": [[0, 0], [1, 1]]}


def test_api_inputs_a_node_lacks_are_set_aside_as_comfyui_does() -> None:
    prompt = api()
    prompt["3"]["inputs"]["noise_seed"] = 77  # clients add keys the node does not have
    wf, _ = import_workflow(prompt, REG)
    assert "noise_seed" not in wf.nodes["3"]["inputs"]
    assert wf.nodes["3"]["comfyui"] == {"ignored_inputs": {"noise_seed": 77}}
    assert validate(wf, REG) == []
    assert api_prompt(wf.nodes, REG) == prompt


def test_api_prompt_written_back_equals_the_one_read() -> None:
    wf, _ = import_workflow(api(), REG)
    assert api_prompt(wf.nodes, REG) == API_PROMPT


def test_api_unknown_classes_are_kept_and_each_reported() -> None:
    prompt = api()
    prompt["20"] = {"class_type": "Mystery", "inputs": {"x": 1}}
    prompt["21"] = {"class_type": "Enigma", "inputs": {"model": ["20", 2]}}
    prompt["3"]["inputs"]["model"] = ["20", 0]
    wf, _ = import_workflow(prompt, REG)
    assert wf.nodes["3"]["inputs"]["model"] == link("20", "output0")
    assert wf.nodes["21"]["inputs"]["model"] == link("20", "output2")
    errors = validate(wf, REG)
    assert [(e["node"], e["code"]) for e in errors] == [("20", "unknown_node_type"),
                                                        ("21", "unknown_node_type")]
    assert "'Mystery'" in errors[0]["message"] and "'Enigma'" in errors[1]["message"]


def test_api_links_to_missing_nodes_are_kept_for_validation() -> None:
    prompt = api()
    prompt["8"]["inputs"]["vae"] = ["99", 0]
    wf, _ = import_workflow(prompt, REG)
    errors = validate(wf, REG)
    assert [(e["node"], e["input"], e["code"]) for e in errors] == [("8", "vae", "dangling_link")]


def test_api_node_without_class_type_is_a_format_error() -> None:
    prompt = api()
    del prompt["7"]["class_type"]
    with pytest.raises(WorkflowFormatError, match="node '7'.*class_type"):
        import_workflow(prompt, REG)


# ---------------------------------------------------------------- the engine hook
def test_unrecognised_documents_name_the_known_formats() -> None:
    with pytest.raises(WorkflowFormatError, match="comfyui-ui, comfyui-api"):
        import_workflow({"something": "else"}, REG)
    with pytest.raises(WorkflowFormatError, match="neither a PNG nor JSON"):
        import_workflow(b"\x00\x01 not json", REG)


def test_a_registered_importer_is_tried_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def toy_format(data: Any, registry: Any) -> dict[str, Any] | None:
        if not (isinstance(data, dict) and "toy" in data):
            return None
        return {"format": "noodle.workflow", "version": 1,
                "nodes": {str(i): {"type": t, "inputs": {}} for i, t in enumerate(data["toy"])}}

    monkeypatch.setitem(workflow_module._IMPORTERS, "toy-format", toy_format)
    wf, kind = import_workflow({"toy": ["A", "B"]}, REG)
    assert kind == "toy-format" and wf.nodes == {"0": {"type": "A", "inputs": {}},
                                                 "1": {"type": "B", "inputs": {}}}
    assert import_workflow(api(), REG)[1] == "comfyui-api"  # the others still answer


def test_v1_documents_are_read_as_they_are() -> None:
    v1 = import_workflow(txt2img(), REG)[0].to_dict()
    wf, kind = import_workflow(json.loads(json.dumps(v1)), REG)
    assert kind == "noodle" and wf == from_dict(json.loads(json.dumps(v1)))
    with pytest.raises(WorkflowFormatError, match="version"):
        import_workflow({**v1, "version": 7}, REG)


# ---------------------------------------------------------------- PNG
def png(**chunks: str) -> bytes:
    """A 4x4 PNG carrying text chunks (iTXt, zip-compressed, for keys starting with z_)."""
    info = PngInfo()
    for key, text in chunks.items():
        if key.startswith("z_"):
            info.add_itxt(key[2:], text, zip=True)
        else:
            info.add_text(key, text)
    out = io.BytesIO()
    Image.new("RGB", (4, 4), "teal").save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def test_png_from_comfyui_prefers_its_workflow_chunk() -> None:
    ui = txt2img()
    data = png(prompt=json.dumps(API_PROMPT), workflow=json.dumps(ui))
    wf, kind = import_workflow(data, REG)
    assert kind == "png"
    assert wf.nodes["3"]["ui"]["pos"] == find(ui, 3)["pos"]  # from the UI document
    assert wf.extra["comfyui"]["extra_pnginfo"] == {"workflow": ui}


def test_png_with_only_a_prompt_chunk_imports_the_prompt() -> None:
    wf, kind = import_workflow(png(prompt=json.dumps(API_PROMPT)), REG)
    assert kind == "png" and list(wf.nodes) == list(API_PROMPT)
    assert wf.extra["comfyui"]["prompt"] == API_PROMPT


def test_png_whose_workflow_chunk_is_broken_falls_back_to_the_prompt() -> None:
    wf, _ = import_workflow(png(workflow="{not json", prompt=json.dumps(API_PROMPT)), REG)
    assert list(wf.nodes) == list(API_PROMPT)


def test_our_own_png_and_compressed_utf8_chunks() -> None:
    v1 = import_workflow(api(), REG)[0].to_dict()
    v1["name"] = "café ☕"
    data = png(z_workflow=json.dumps(v1, ensure_ascii=False))
    assert png_text_chunks(data)["workflow"].startswith("{")
    wf, kind = import_workflow(data, REG)
    assert kind == "png" and wf.name == "café ☕" and wf.nodes == v1["nodes"]


def test_png_without_a_workflow_is_an_error() -> None:
    with pytest.raises(WorkflowFormatError, match="carries no workflow"):
        import_workflow(png(Software="paint"), REG)
    with pytest.raises(WorkflowFormatError, match="png chunk 'workflow'"):
        import_workflow(png(workflow=json.dumps({"nodes": "wrong", "links": []})), REG)


# ---------------------------------------------------------------- files
def test_files_are_read_by_content_and_named_by_their_stem(tmp_path: Path) -> None:
    (tmp_path / "my graph.json").write_text(json.dumps(txt2img()))
    (tmp_path / "render.png").write_bytes(png(prompt=json.dumps(API_PROMPT)))
    (tmp_path / "renamed.json").write_bytes(png(prompt=json.dumps(API_PROMPT)))
    assert load_workflow_file(tmp_path / "my graph.json", REG).name == "my graph"
    assert list(load_workflow_file(tmp_path / "render.png", REG).nodes) == list(API_PROMPT)
    assert list(load_workflow_file(tmp_path / "renamed.json", REG).nodes) == list(API_PROMPT)
    own = import_workflow(api(), REG)[0]
    (tmp_path / "own.json").write_text(dumps(own))
    assert load_workflow_file(tmp_path / "own.json", REG) == own  # v1 keeps its own name


def test_file_errors_name_the_file_and_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": [\n  {"id": 1,}\n]}')
    with pytest.raises(WorkflowFormatError, match=r"bad\.json line 2 column"):
        load_workflow_file(bad, REG)
    doc = txt2img()
    doc["links"][2] = "oops"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    with pytest.raises(WorkflowFormatError, match=r"broken\.json links\[2\]"):
        load_workflow_file(broken, REG)
    with pytest.raises(WorkflowFormatError, match="cannot read"):
        load_workflow_file(tmp_path / "absent.json", REG)


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("source", ["ui", "api", "subgraph", "png"])
def test_import_save_load_gives_the_same_graph(source: str) -> None:
    data: Any = {"ui": txt2img, "api": api, "subgraph": lambda: with_subgraph(ENCODE),
                 "png": lambda: png(workflow=json.dumps(txt2img()))}[source]()
    wf, _ = import_workflow(data, REG)
    again = load_workflow(dumps(wf))
    assert again == wf
    assert again.to_dict() == json.loads(dumps(wf))
    assert validate(again, REG) == validate(wf, REG)
