"""Routes of the server: nodes, models, prompt queue, history, interrupt, websocket events."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pytest

from graph_runtime import Choice, Folders, Registry, SocketType, node
from graph_runtime.executor import Executor
from graph_runtime.server import create_app
from graph_runtime.server.app import QUEUE_KEY
from tests.support.noodle_api import wait_history
from tests.support.toy_nodes import image_workflow
from tests.support.workflows import add_nodes, link, workflow_dict

pytestmark = pytest.mark.asyncio


class Unet:
    __socket__ = "UNET"


async def test_index_serves_canvas_with_csp(client: Any) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert "text/html" in resp.headers["Content-Type"]
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "<canvas" in await resp.text()


async def test_static_js_and_lib(client: Any) -> None:
    resp = await client.get("/lib/litegraph.es.js")
    assert resp.status == 200
    assert "LGraphCanvas" in await resp.text()
    assert (await client.get("/js/../../pyproject.toml")).status in (403, 404)


async def test_nodes_schema(client: Any) -> None:
    resp = await client.get("/api/nodes")
    data = await resp.json()
    assert set(data) == {"Number", "AddInt", "Gradient", "SavePicture", "ShowInt", "Fail"}
    grad = {i["name"]: i for i in data["Gradient"]["inputs"]}
    assert grad["seed"]["widget"] == "seed"
    assert grad["colour"]["options"] == ["red", "green", "blue"]
    assert data["SavePicture"]["output_node"] is True
    assert data["Gradient"]["outputs"] == [{"name": "image", "type": "IMAGE"}]


async def test_types_give_colours_and_compatibility(client: Any) -> None:
    data = await (await client.get("/api/types")).json()
    assert {"INT", "FLOAT", "STRING", "BOOLEAN", "IMAGE"} <= set(data)
    assert data["FLOAT"]["accepts"] == ["FLOAT", "INT"]
    assert data["INT"]["accepts"] == ["INT"]
    assert data["IMAGE"]["color"].startswith("#")


async def test_choices_list_the_servers_folders(aiohttp_client: Any,
                                                run_folders: Folders) -> None:
    """A choice fed by a folder lists the folder the server was given (what /api/models
    did for checkpoints, for any folder and any node)."""
    reg = Registry()
    reg.add_socket_type(SocketType("UNET"))

    def models(f: Folders) -> list[str]:
        return sorted(p.name for p in f.models.iterdir())

    @node("LoadPipeline", registry=reg, output="unet")
    def load(source: Annotated[str, Choice(models, allow_other=True)] = "") -> Unet:
        """Loads."""
        return Unet()

    client = await aiohttp_client(create_app(Executor(reg, folders=run_folders)))
    schema = (await (await client.get("/api/nodes")).json())["LoadPipeline"]
    assert schema["inputs"][0]["options"] == ["single.safetensors", "tiny-model"]


async def test_prompt_runs_and_history_has_image(client: Any) -> None:
    resp = await client.post("/api/prompt", json={"workflow": image_workflow(),
                                                  "client_id": "c1"})
    assert resp.status == 200
    body = await resp.json()
    assert body["number"] == 1 and len(body["prompt_id"]) == 32
    entry = await wait_history(client, body["prompt_id"])
    assert entry["status"] == "success"
    assert entry["executed"] == ["1", "2"]
    image = entry["outputs"]["2"]["images"][0]
    assert image["type"] == "output" and image["filename"].endswith(".png")
    view = await client.get("/api/view", params=image)
    assert view.status == 200 and view.headers["Content-Type"] == "image/png"
    assert (await view.read())[:8] == b"\x89PNG\r\n\x1a\n"
    listing = await (await client.get("/api/history")).json()
    assert [e["prompt_id"] for e in listing] == [body["prompt_id"]]


async def test_cache_lives_across_prompts(client: Any) -> None:
    first = await (await client.post("/api/prompt", json={"workflow": image_workflow()})).json()
    await wait_history(client, first["prompt_id"])
    wf = image_workflow()
    wf["nodes"]["2"]["inputs"]["filename_prefix"] = "other"
    second = await (await client.post("/api/prompt", json={"workflow": wf})).json()
    entry = await wait_history(client, second["prompt_id"])
    assert entry["cached"] == ["1"] and entry["executed"] == ["2"]


async def test_invalid_workflow_gets_all_errors(client: Any) -> None:
    wf = image_workflow()
    wf["nodes"]["1"]["inputs"]["size"] = 100000
    add_nodes(wf, {"3": ("NoSuchNode", {}), "4": ("ShowInt", {"value": link("1", "image")})})
    resp = await client.post("/api/prompt", json={"workflow": wf})
    assert resp.status == 400
    codes = {(e["node"], e["input"], e["code"]) for e in (await resp.json())["errors"]}
    assert ("1", "size", "value_out_of_range") in codes
    assert ("3", None, "unknown_node_type") in codes
    assert ("4", "value", "type_mismatch") in codes
    assert (await (await client.get("/api/queue")).json())["pending"] == []


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"client_id": "x"}',
                                  b'{"workflow": {"format": "other"}}',
                                  b'{"workflow": {"format": "noodle.workflow", "version": 1, '
                                  b'"nodes": []}}',
                                  b'{"workflow": {}, "client_id": 5}'])
async def test_prompt_bad_bodies(client: Any, body: bytes) -> None:
    resp = await client.post("/api/prompt", data=body,
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    errors = (await resp.json())["errors"]
    assert errors and all({"node", "input", "code", "message"} <= set(e) for e in errors)


async def test_failing_prompt_does_not_stop_queue(client: Any) -> None:
    bad = workflow_dict({"1": ("Number", {"value": 4}),
                         "2": ("Fail", {"value": link("1", "value")})})
    r1 = await (await client.post("/api/prompt", json={"workflow": bad})).json()
    r2 = await (await client.post("/api/prompt", json={"workflow": image_workflow()})).json()
    assert r2["number"] == r1["number"] + 1
    e1 = await wait_history(client, r1["prompt_id"])
    e2 = await wait_history(client, r2["prompt_id"])
    assert e1["status"] == "error" and e1["error"]["node"] == "2"
    assert "failing on purpose with 4" in e1["error"]["message"]
    assert e2["status"] == "success"


async def test_queue_delete_and_interrupt(client: Any) -> None:
    slow = await (await client.post("/api/prompt", json={
        "workflow": image_workflow(steps=200, delay=0.02)})).json()
    pending = await (await client.post("/api/prompt", json={
        "workflow": image_workflow(seed=7)})).json()
    for _ in range(100):
        q = await (await client.get("/api/queue")).json()
        if q["running"]:
            break
        await asyncio.sleep(0.02)
    assert q["running"][0]["prompt_id"] == slow["prompt_id"]
    assert [p["prompt_id"] for p in q["pending"]] == [pending["prompt_id"]]
    resp = await client.delete(f"/api/queue/{pending['prompt_id']}")
    assert (await resp.json())["result"] == "deleted"
    assert (await client.delete("/api/queue/nope")).status == 404
    resp = await client.post("/api/interrupt")
    assert (await resp.json())["interrupted"] == slow["prompt_id"]
    entry = await wait_history(client, slow["prompt_id"])
    assert entry["status"] == "interrupted"
    assert client.server.app[QUEUE_KEY].wait_idle(5)
    assert (await client.get(f"/api/history/{pending['prompt_id']}")).status == 404
    assert (await (await client.post("/api/interrupt")).json())["interrupted"] is None


async def test_history_unknown_id(client: Any) -> None:
    resp = await client.get("/api/history/does-not-exist")
    assert resp.status == 404


async def test_websocket_events_in_order(client: Any) -> None:
    ws = await client.ws_connect("/ws?client_id=abc")
    greeting = await ws.receive_json(timeout=5)
    assert greeting["type"] == "status"
    resp = await client.post("/api/prompt", json={"workflow": image_workflow(steps=2),
                                                  "client_id": "abc"})
    pid = (await resp.json())["prompt_id"]
    seen: list[dict] = []
    while True:
        msg = await ws.receive_json(timeout=20)
        if msg["type"] != "status":
            seen.append(msg)
        if msg["type"] == "finished":
            break
    kinds = [m["type"] for m in seen]
    assert kinds == ["queued", "started", "node_started", "progress", "progress",
                     "node_finished", "node_started", "node_finished", "executed", "finished"]
    assert all(m["data"]["prompt_id"] == pid for m in seen)
    progress = seen[3]["data"]
    assert (progress["node"], progress["step"], progress["total"]) == ("1", 1, 2)
    assert progress["preview"].startswith("data:image/jpeg;base64,")
    executed = seen[8]["data"]
    assert executed["node"] == "2" and executed["ui"]["images"][0]["type"] == "output"
    assert seen[-1]["data"]["ok"] is True
    assert seen[-1]["data"]["files"][0]["filename"].endswith(".png")
    await ws.close()


async def test_websocket_events_go_to_their_client(client: Any) -> None:
    other = await client.ws_connect("/ws?client_id=other")
    await other.receive_json(timeout=5)
    resp = await client.post("/api/prompt", json={"workflow": image_workflow(seed=3),
                                                  "client_id": "abc"})
    await wait_history(client, (await resp.json())["prompt_id"])
    kinds = set()
    while True:
        try:
            kinds.add((await other.receive_json(timeout=0.3))["type"])
        except asyncio.TimeoutError:
            break
    assert kinds == {"status"}
    await other.close()


async def test_unexpected_executor_failure_is_recorded_and_queue_continues(client: Any) -> None:
    queue = client.server.app[QUEUE_KEY]
    real_run = queue.executor.run
    calls = []

    def broken_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("host out of memory")
        return real_run(*args, **kwargs)

    queue.executor.run = broken_once
    first = await (await client.post("/api/prompt", json={"workflow": image_workflow()})).json()
    second = await (await client.post("/api/prompt", json={
        "workflow": image_workflow(seed=9)})).json()
    e1 = await wait_history(client, first["prompt_id"])
    e2 = await wait_history(client, second["prompt_id"])
    assert e1["status"] == "error" and e1["error"]["exception_type"] == "MemoryError"
    assert e2["status"] == "success" and len(calls) == 2
