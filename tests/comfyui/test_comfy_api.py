"""ComfyUI's HTTP API served by our server: prompt, history, queue, control, info routes and
their error shapes (COMFYUI-API.md §1), beside our own API on the same paths."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from graph_runtime.server.app import QUEUE_KEY
from tests.support.comfy_api import (
    MODEL_LISTS,
    comfy_app,
    comfy_registry,
    gradient_prompt,
    wait_history,
    wait_running,
)
from tests.support.toy_nodes import image_workflow

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Any:
    return await aiohttp_client(comfy_app(tmp_path))


async def post_prompt(client: Any, prompt: Any, path: str = "/prompt", **body: Any) -> Any:
    return await client.post(path, json={"prompt": prompt, **body})


# ------------------------------------------------------------------ prompt and history
@pytest.mark.parametrize("path", ["/prompt", "/api/prompt"])
async def test_prompt_runs_and_history_has_comfyui_shape(client: Any, tmp_path: Path,
                                                         path: str) -> None:
    prompt = gradient_prompt()
    pnginfo = {"workflow": {"nodes": [], "links": []}}
    resp = await post_prompt(client, prompt, path, client_id="c1", prompt_id="my-id",
                             extra_data={"extra_pnginfo": pnginfo, "api_key_comfy_org": "s"})
    assert resp.status == 200
    body = await resp.json()
    assert body["prompt_id"] == "my-id" and body["node_errors"] == {}
    assert isinstance(body["number"], (int, float))
    entry = await wait_history(client, "my-id")
    number, pid, stored, extra, outputs = entry["prompt"]
    assert (number, pid, outputs) == (body["number"], "my-id", ["2"])
    assert stored == prompt  # unchanged, `_meta` included
    assert extra == {"extra_pnginfo": pnginfo, "client_id": "c1"}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert kinds == ["execution_start", "execution_cached", "execution_success"]
    assert all(isinstance(m[1]["timestamp"], int) for m in entry["status"]["messages"])
    image = entry["outputs"]["2"]["images"][0]
    assert set(image) == {"filename", "subfolder", "type"} and image["type"] == "output"
    assert entry["meta"]["2"] == {"node_id": "2", "display_node": "2", "parent_node": None,
                                  "real_node_id": "2"}
    view = await client.get("/view", params=image)
    assert view.status == 200 and (await view.read())[:8] == b"\x89PNG\r\n\x1a\n"
    # The run's workflow carried the prompt and PNG extras for save nodes to embed.
    with Image.open(tmp_path / "output" / image["filename"]) as png:
        saved = json.loads(png.text["workflow"])
    assert saved["comfyui"] == {"prompt": prompt, "extra_pnginfo": pnginfo}


async def test_both_prompt_bodies_share_one_queue(client: Any) -> None:
    ours = await (await client.post("/api/prompt", json={"workflow": image_workflow()})).json()
    theirs = await (await post_prompt(client, gradient_prompt(seed=5), "/api/prompt")).json()
    assert set(ours) == {"prompt_id", "number"} and "node_errors" in theirs
    assert theirs["number"] == ours["number"] + 1
    entry = await wait_history(client, theirs["prompt_id"])
    assert entry["status"]["completed"]
    # Our route keeps our shape for our prompt, ComfyUI's for ComfyUI's.
    own = await (await client.get(f"/api/history/{ours['prompt_id']}")).json()
    assert own["status"] == "success" and own["prompt_id"] == ours["prompt_id"]
    other = await (await client.get(f"/api/history/{theirs['prompt_id']}")).json()
    assert set(other) == {theirs["prompt_id"]}
    # ComfyUI's history lists both, ours in API form.
    listing = await (await client.get("/history")).json()
    assert list(listing) == [ours["prompt_id"], theirs["prompt_id"]]
    assert listing[ours["prompt_id"]]["prompt"][2]["2"]["inputs"]["image"] == ["1", 0]
    assert isinstance(await (await client.get("/api/history")).json(), list)


async def test_history_paging_delete_and_clear(client: Any) -> None:
    ids = []
    for seed in range(3):
        ids.append((await (await post_prompt(client, gradient_prompt(seed=seed))).json())
                   ["prompt_id"])
    for pid in ids:
        await wait_history(client, pid)
    assert list(await (await client.get("/history?max_items=2")).json()) == ids[1:]
    assert list(await (await client.get("/api/history?max_items=1&offset=0")).json()) == ids[:1]
    assert await (await client.get("/history/unknown")).json() == {}
    resp = await client.post("/history", json={"delete": [ids[0]]})
    assert resp.status == 200 and await resp.read() == b""
    assert list(await (await client.get("/history")).json()) == ids[1:]
    await client.post("/api/history", json={"clear": True})
    assert await (await client.get("/history")).json() == {}


async def test_get_prompt_counts_the_queue(client: Any) -> None:
    assert await (await client.get("/prompt")).json() == {"exec_info": {"queue_remaining": 0}}


# ------------------------------------------------------------------ validation errors
async def error_of(client: Any, prompt: Any, **body: Any) -> dict[str, Any]:
    resp = await post_prompt(client, prompt, **body)
    assert resp.status == 400
    data = await resp.json()
    assert set(data) == {"error", "node_errors"}
    assert set(data["error"]) == {"type", "message", "details", "extra_info"}
    return data


async def test_no_prompt_and_unknown_classes(client: Any) -> None:
    resp = await client.post("/prompt", data=b'{"client_id": "x"}')
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "no_prompt"
    missing = await error_of(client, {"1": {"inputs": {}}})
    assert missing["error"]["type"] == "invalid_prompt"
    assert missing["error"]["details"] == "Node ID '#1'"
    prompt = gradient_prompt()
    prompt["7"] = {"class_type": "NoSuchNode", "inputs": {}}
    prompt["8"] = {"class_type": "AlsoMissing", "inputs": {"x": ["7", 0]}}
    data = await error_of(client, prompt)
    assert data["error"]["type"] == "invalid_prompt"
    assert "NoSuchNode" in data["error"]["message"] and "AlsoMissing" in data["error"]["message"]
    assert {nid: e["class_type"] for nid, e in data["node_errors"].items()} == {
        "7": "NoSuchNode", "8": "AlsoMissing"}
    assert (await (await client.get("/queue")).json())["queue_pending"] == []


async def test_no_outputs(client: Any) -> None:
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 3}}}
    assert (await error_of(client, prompt))["error"]["type"] == "prompt_no_outputs"
    assert (await error_of(client, {}))["error"]["type"] == "prompt_no_outputs"


async def test_input_errors_map_to_comfyui_types(client: Any) -> None:
    prompt = gradient_prompt(colour="purple")
    prompt["1"]["inputs"]["size"] = 2
    prompt["3"] = {"class_type": "AddInt", "inputs": {"a": ["1", 0], "b": 1000}}
    prompt["4"] = {"class_type": "ShowInt", "inputs": {"value": ["3", 0]}}
    prompt["5"] = {"class_type": "ShowInt", "inputs": {}}
    data = await error_of(client, prompt)
    assert data["error"]["type"] == "prompt_outputs_failed_validation"
    errors = {nid: {e["type"]: e for e in entry["errors"]}
              for nid, entry in data["node_errors"].items()}
    choice = errors["1"]["value_not_in_list"]
    assert choice["details"] == "colour: 'purple' not in ['red', 'green', 'blue']"
    assert choice["extra_info"]["input_name"] == "colour"
    assert choice["extra_info"]["received_value"] == "purple"
    assert errors["1"]["value_smaller_than_min"]["message"] == "Value 2 smaller than min of 8"
    assert errors["3"]["value_bigger_than_max"]["details"] == "b"
    assert errors["3"]["return_type_mismatch"]["details"] == (
        "a, received_type(IMAGE) mismatch input_type(INT)")
    assert errors["5"]["required_input_missing"]["extra_info"] == {"input_name": "value"}
    assert sorted(data["node_errors"]["1"]["dependent_outputs"]) == ["2", "4"]
    assert data["node_errors"]["5"]["class_type"] == "ShowInt"
    assert "Value not in list: colour: 'purple'" in data["error"]["details"]


async def test_values_converted_and_unknown_inputs_ignored(client: Any) -> None:
    prompt = gradient_prompt()
    prompt["1"]["inputs"].update(steps="2", seed=3.0, not_an_input=1)
    resp = await post_prompt(client, prompt)
    assert resp.status == 200, await resp.text()
    entry = await wait_history(client, (await resp.json())["prompt_id"])
    assert entry["status"]["completed"] and entry["prompt"][2] == prompt
    bad = gradient_prompt()
    bad["1"]["inputs"]["steps"] = "many"
    errors = (await error_of(client, bad))["node_errors"]["1"]["errors"]
    assert errors[0]["type"] == "invalid_input_type"


async def test_valid_outputs_run_when_others_fail(client: Any) -> None:
    prompt = gradient_prompt()
    prompt["3"] = {"class_type": "Number", "inputs": {"value": 500}}
    prompt["4"] = {"class_type": "ShowInt", "inputs": {"value": ["3", 0]}}
    resp = await post_prompt(client, prompt)
    assert resp.status == 200
    body = await resp.json()
    assert body["node_errors"]["3"]["dependent_outputs"] == ["4"]
    entry = await wait_history(client, body["prompt_id"])
    assert entry["prompt"][4] == ["2"] and list(entry["outputs"]) == ["2"]


async def test_partial_execution_targets(client: Any) -> None:
    prompt = gradient_prompt()
    prompt["3"] = {"class_type": "Number", "inputs": {"value": 4}}
    prompt["4"] = {"class_type": "ShowInt", "inputs": {"value": ["3", 0]}}
    resp = await post_prompt(client, prompt, partial_execution_targets=["4"])
    entry = await wait_history(client, (await resp.json())["prompt_id"])
    assert entry["prompt"][4] == ["4"] and entry["outputs"] == {"4": {"text": ["4"]}}


# ------------------------------------------------------------------ queue and control
async def test_queue_tuples_priority_delete_and_interrupt(client: Any) -> None:
    slow = (await (await post_prompt(client, gradient_prompt(steps=100, delay=0.02))).json())
    running = await wait_running(client)
    assert running[1] == slow["prompt_id"] and len(running) == 5
    a = (await (await post_prompt(client, gradient_prompt(seed=1))).json())["prompt_id"]
    b = (await (await post_prompt(client, gradient_prompt(seed=2), front=True)).json())
    c = (await (await post_prompt(client, gradient_prompt(seed=3))).json())["prompt_id"]
    queue = await (await client.get("/queue")).json()
    assert [item[1] for item in queue["queue_pending"]] == [b["prompt_id"], a, c]
    assert b["number"] < 0
    both = await (await client.get("/api/queue")).json()
    assert {"running", "pending", "queue_running", "queue_pending"} <= set(both)
    resp = await client.post("/queue", json={"delete": [a]})
    assert resp.status == 200 and await resp.read() == b""
    await client.post("/queue", json={"clear": True})
    assert (await (await client.get("/queue")).json())["queue_pending"] == []
    # Interrupting another prompt id leaves the running one alone.
    await client.post("/interrupt", json={"prompt_id": "someone-else"})
    await asyncio.sleep(0.1)
    assert (await (await client.get("/queue")).json())["queue_running"]
    resp = await client.post("/interrupt")
    assert resp.status == 200 and await resp.read() == b""
    entry = await wait_history(client, slow["prompt_id"])
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert await (await client.get(f"/history/{a}")).json() == {}


async def test_duplicate_prompt_id_refused_while_queued(client: Any) -> None:
    await post_prompt(client, gradient_prompt(steps=50, delay=0.02), prompt_id="same")
    data = await error_of(client, gradient_prompt(), prompt_id="same")
    assert data["error"]["type"] == "invalid_prompt"
    await client.post("/interrupt")
    await wait_history(client, "same")


async def test_free_clears_the_cache(client: Any) -> None:
    pid = (await (await post_prompt(client, gradient_prompt())).json())["prompt_id"]
    await wait_history(client, pid)
    queue = client.server.app[QUEUE_KEY]
    assert len(queue.executor.cache) > 0
    resp = await client.post("/free", json={"unload_models": True, "free_memory": True})
    assert resp.status == 200 and await resp.read() == b""
    assert len(queue.executor.cache) == 0


# ------------------------------------------------------------------ node and system info
async def test_object_info_in_comfyui_shape(client: Any) -> None:
    info = await (await client.get("/object_info")).json()
    assert set(info) == {"ToySampler", "ToyLoadImage"}  # only the ComfyUI category
    sampler = (await (await client.get("/api/object_info/ToySampler")).json())["ToySampler"]
    required = sampler["input"]["required"]
    assert required["value"] == ["INT", {"forceInput": True}]
    assert required["seed"][1]["control_after_generate"] is True
    assert required["seed"][1]["max"] == 2**64 - 1
    assert required["sampler_name"] == [["euler", "heun", "ddim"],
                                        {"default": "euler", "tooltip": "how"}]
    assert required["text"] == ["STRING", {"default": "", "multiline": True}]
    assert sampler["input"]["optional"] == {"extra": ["IMAGE"]}
    assert sampler["input_order"] == {"required": ["value", "seed", "steps", "cfg",
                                                   "sampler_name", "text"],
                                      "optional": ["extra"]}
    assert (sampler["output"], sampler["output_name"], sampler["output_is_list"]) == (
        ["INT"], ["VALUE"], [False])
    assert (sampler["category"], sampler["display_name"], sampler["output_node"]) == (
        "sampling", "Toy Sampler", False)
    assert sampler["python_module"] == "nodes" and sampler["description"] == "Adds the steps."
    loader = info["ToyLoadImage"]["input"]["required"]["image"]
    assert loader[1] == {"image_upload": True} and isinstance(loader[0], list)
    assert await (await client.get("/object_info/SavePicture")).json() == {}
    assert await (await client.get("/object_info/Nope")).json() == {}


async def test_models_and_embeddings_from_providers(client: Any) -> None:
    assert await (await client.get("/models")).json() == list(MODEL_LISTS)
    assert await (await client.get("/api/models/checkpoints")).json() == MODEL_LISTS[
        "checkpoints"]
    assert (await client.get("/models/nope")).status == 404
    assert await (await client.get("/embeddings")).json() == ["emb_one"]


async def test_without_providers_lists_are_empty(aiohttp_client: Any, tmp_path: Path) -> None:
    bare = await aiohttp_client(comfy_app(tmp_path, comfy_registry(providers=False)))
    assert await (await bare.get("/models")).json() == []
    assert await (await bare.get("/embeddings")).json() == []


async def test_system_stats_features_extensions(client: Any) -> None:
    stats = await (await client.get("/system_stats")).json()
    assert {"os", "ram_total", "ram_free", "comfyui_version", "python_version",
            "pytorch_version", "embedded_python", "argv"} <= set(stats["system"])
    device = stats["devices"][0]
    assert {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total",
            "torch_vram_free"} <= set(device)
    features = await (await client.get("/api/features")).json()
    assert features == {"supports_preview_metadata": False, "max_upload_size": float(2**20)}
    assert await (await client.get("/extensions")).json() == []


async def test_comfyui_routes_keep_the_security_rules(client: Any) -> None:
    evil = {"Origin": "http://evil.example"}
    for path in ("/prompt", "/queue", "/interrupt", "/history", "/free", "/upload/image"):
        assert (await client.post(path, json={}, headers=evil)).status == 403, path
    assert (await client.get("/system_stats", headers={"Host": "evil.example"})).status == 403
    resp = await client.get("/view", params={"filename": "../secret.txt"})
    assert resp.status == 400
