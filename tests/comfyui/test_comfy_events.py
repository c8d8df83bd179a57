"""ComfyUI's websocket protocol on /ws: greeting, per-prompt message order (history written
before the final status), routing by client id, errors, and its separation from ours."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.support.comfy_api import comfy_app, gradient_prompt, wait_history
from tests.support.toy_nodes import image_workflow

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Any:
    return await aiohttp_client(comfy_app(tmp_path))


FINAL = ("execution_success", "execution_error", "execution_interrupted")


async def until_done(client: Any, ws: Any, prompt_id: str) -> list[dict[str, Any]]:
    """Messages up to `executing {node: null}` of `prompt_id`; checks the history entry is
    already there when the prompt's outcome is announced (and so before the last status)."""
    seen: list[dict[str, Any]] = []
    while True:
        msg = await ws.receive_json(timeout=20)
        seen.append(msg)
        if msg["type"] in FINAL and msg["data"]["prompt_id"] == prompt_id:
            assert prompt_id in await (await client.get(f"/history/{prompt_id}")).json()
        if msg["type"] == "executing" and msg["data"]["node"] is None:
            return seen


async def drain(ws: Any, wait: float = 0.3) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            out.append(await ws.receive_json(timeout=wait))
        except asyncio.TimeoutError:
            return out


async def test_message_order_for_one_prompt(client: Any) -> None:
    ws = await client.ws_connect("/ws?clientId=c1")
    hello = await ws.receive_json(timeout=5)
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                "sid": "c1"}}
    resp = await client.post("/prompt", json={"prompt": gradient_prompt(), "client_id": "c1"})
    pid = (await resp.json())["prompt_id"]
    seen = await until_done(client, ws, pid)
    kinds = [m["type"] for m in seen]
    assert kinds == ["status", "status", "execution_start", "execution_cached", "executing",
                     "progress", "progress", "executing", "executed", "execution_success",
                     "status", "executing"]
    remaining = [m["data"]["status"]["exec_info"]["queue_remaining"]
                 for m in seen if m["type"] == "status"]
    assert remaining == [1, 1, 0]
    assert seen[4]["data"] == {"node": "1", "display_node": "1", "prompt_id": pid}
    assert seen[5]["data"] == {"value": 1, "max": 2, "prompt_id": pid, "node": "1"}
    executed = seen[8]["data"]
    assert executed["node"] == "2" and executed["prompt_id"] == pid
    assert executed["output"]["images"][0]["type"] == "output"
    assert seen[-1]["data"] == {"node": None, "prompt_id": pid}
    assert all(m["type"] != "status" or "sid" not in m["data"] for m in seen)
    await ws.close()


async def test_cached_run_reports_cached_nodes_and_resends_outputs(client: Any) -> None:
    ws = await client.ws_connect("/ws?clientId=c2")
    await ws.receive_json(timeout=5)
    for _ in range(2):
        resp = await client.post("/prompt", json={"prompt": gradient_prompt(seed=4),
                                                  "client_id": "c2"})
        seen = await until_done(client, ws, (await resp.json())["prompt_id"])
    cached = next(m for m in seen if m["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["1", "2"]
    assert [m["type"] for m in seen if m["type"].startswith("execut")] == [
        "execution_start", "execution_cached", "executed", "execution_success", "executing"]


async def test_execution_error_message_and_history(client: Any) -> None:
    ws = await client.ws_connect("/ws?clientId=c3")
    await ws.receive_json(timeout=5)
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 4}},
              "2": {"class_type": "Fail", "inputs": {"value": ["1", 0]}}}
    pid = (await (await client.post("/prompt", json={"prompt": prompt, "client_id": "c3"}))
           .json())["prompt_id"]
    seen = await until_done(client, ws, pid)
    error = next(m["data"] for m in seen if m["type"] == "execution_error")
    assert (error["node_id"], error["node_type"]) == ("2", "Fail")
    assert error["exception_type"] == "RuntimeError"
    assert "failing on purpose with 4" in error["exception_message"]
    assert isinstance(error["traceback"], list) and error["traceback"]
    assert error["executed"] == ["1"] and error["current_outputs"] == ["1"]
    assert {"prompt_id", "current_inputs", "timestamp"} <= set(error)
    assert "execution_success" not in [m["type"] for m in seen]
    entry = await wait_history(client, pid)
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][-1][0] == "execution_error"


async def test_routing_by_client_id(client: Any) -> None:
    mine = await client.ws_connect("/ws?clientId=mine")
    other = await client.ws_connect("/ws?clientId=other")
    ours = await client.ws_connect("/ws?client_id=mine")
    for ws in (mine, other, ours):
        await ws.receive_json(timeout=5)
    resp = await client.post("/prompt", json={"prompt": gradient_prompt(seed=8),
                                              "client_id": "mine"})
    await until_done(client, mine, (await resp.json())["prompt_id"])
    assert {m["type"] for m in await drain(other)} == {"status"}
    our_kinds = {m["type"] for m in await drain(ours)}
    assert "finished" in our_kinds and not our_kinds & {"execution_start", "executing"}
    # Without a client id only progress reaches ComfyUI sockets (broadcast), as in ComfyUI.
    resp = await client.post("/prompt", json={"prompt": gradient_prompt(seed=9)})
    await wait_history(client, (await resp.json())["prompt_id"])
    assert {m["type"] for m in await drain(other)} == {"status", "progress"}


async def test_comfy_sockets_hear_prompts_sent_as_v1_workflows(client: Any) -> None:
    ws = await client.ws_connect("/ws?clientId=both")
    await ws.receive_json(timeout=5)
    resp = await client.post("/api/prompt", json={"workflow": image_workflow(seed=2),
                                                  "client_id": "both"})
    seen = await until_done(client, ws, (await resp.json())["prompt_id"])
    assert [m["type"] for m in seen][-3:] == ["execution_success", "status", "executing"]


async def test_socket_without_id_gets_one_and_feature_flags_are_answered(client: Any) -> None:
    ws = await client.ws_connect("/ws")
    hello = await ws.receive_json(timeout=5)
    assert hello["type"] == "status" and len(hello["data"]["sid"]) == 32
    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    flags = await ws.receive_json(timeout=5)
    assert flags == {"type": "feature_flags", "data": {"supports_preview_metadata": False,
                                                       "max_upload_size": float(2**20)}}
    await ws.send_str("not json")
    assert await drain(ws, 0.2) == []
    api_ws = await client.ws_connect("/api/ws?clientId=x")
    assert (await api_ws.receive_json(timeout=5))["data"]["sid"] == "x"


async def test_reconnecting_client_is_told_the_running_node(client: Any) -> None:
    resp = await client.post("/prompt", json={"prompt": gradient_prompt(steps=100, delay=0.02),
                                              "client_id": "late"})
    pid = (await resp.json())["prompt_id"]
    for _ in range(100):
        if (await (await client.get("/queue")).json())["queue_running"]:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    ws = await client.ws_connect("/ws?clientId=late")
    greeting = [await ws.receive_json(timeout=5) for _ in range(2)]
    assert greeting[0]["type"] == "status"
    assert greeting[1] == {"type": "executing", "data": {"node": "1"}}
    await client.post("/interrupt")
    seen = await until_done(client, ws, pid)
    interrupted = next(m["data"] for m in seen if m["type"] == "execution_interrupted")
    assert interrupted["prompt_id"] == pid and interrupted["node_id"] == "1"


async def test_cross_origin_comfy_socket_refused(client: Any) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws?clientId=x", headers={"Origin": "http://evil.example"})
    assert info.value.status == 403
