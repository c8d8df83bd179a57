"""The history entry of a prompt exists before its final event is sent, on both protocols.

A client that waits for the end of a prompt and then reads its history must find it on the
first read: our `finished`, ComfyUI's `execution_success` and `executing {node: null}`.
Tried a thousand times, alternating the route the prompt is sent by, with a tiny graph so
the race (if there were one) gets many chances.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from graph_runtime.server.app import QUEUE_KEY
from tests.support.comfy_api import comfy_app
from tests.support.workflows import link, workflow_dict

pytestmark = pytest.mark.asyncio
TRIES = 1000
CLIENT = "order"


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Any:
    return await aiohttp_client(comfy_app(tmp_path))


def ours(value: int) -> dict[str, Any]:
    return {"client_id": CLIENT, "workflow": workflow_dict({
        "1": ("Number", {"value": value}), "2": ("ShowInt", {"value": link("1", "value")})})}


def comfy(value: int) -> dict[str, Any]:
    return {"client_id": CLIENT, "prompt": {
        "1": {"class_type": "Number", "inputs": {"value": value}},
        "2": {"class_type": "ShowInt", "inputs": {"value": ["1", 0]}}}}


async def read_until(ws: Any, done: Any, prompt_id: str) -> dict[str, Any]:
    """The next message that `done` accepts for `prompt_id`."""
    while True:
        msg = await ws.receive_json(timeout=20)
        if msg["data"].get("prompt_id") == prompt_id and done(msg):
            return msg


async def our_side(client: Any, ws: Any, pid: str) -> None:
    await read_until(ws, lambda m: m["type"] == "finished", pid)
    resp = await client.get(f"/api/history/{pid}")
    assert resp.status == 200, f"{pid}: no history on our finished event"
    assert await resp.json()


async def comfy_side(client: Any, ws: Any, pid: str) -> None:
    await read_until(ws, lambda m: m["type"] == "execution_success", pid)
    assert pid in await (await client.get(f"/history/{pid}")).json(), \
        f"{pid}: no history on execution_success"
    await read_until(ws, lambda m: m["type"] == "executing" and m["data"]["node"] is None, pid)
    assert pid in await (await client.get(f"/history/{pid}")).json(), \
        f"{pid}: no history on executing null"


async def test_history_is_there_on_the_final_event(client: Any) -> None:
    our_ws = await client.ws_connect(f"/ws?client_id={CLIENT}")
    comfy_ws = await client.ws_connect(f"/ws?clientId={CLIENT}")
    for i in range(TRIES):
        if i % 2:
            resp = await client.post("/prompt", json=comfy(i % 101))
        else:
            resp = await client.post("/api/prompt", json=ours(i % 101))
        assert resp.status == 200, await resp.text()
        pid = (await resp.json())["prompt_id"]
        await asyncio.gather(our_side(client, our_ws, pid), comfy_side(client, comfy_ws, pid))
    assert client.server.app[QUEUE_KEY].history_count() == TRIES
    await our_ws.close()
    await comfy_ws.close()


async def test_a_prompt_that_cannot_run_is_recorded_before_its_finished(client: Any) -> None:
    """A prompt that fails before running (the executor itself raising) still has its
    history entry when `finished` arrives."""
    queue = client.server.app[QUEUE_KEY]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError("host out of memory")

    queue.executor.run = broken
    ws = await client.ws_connect(f"/ws?client_id={CLIENT}")
    for i in range(20):
        pid = (await (await client.post("/api/prompt", json=ours(i))).json())["prompt_id"]
        await read_until(ws, lambda m: m["type"] == "finished", pid)
        resp = await client.get(f"/api/history/{pid}")
        assert resp.status == 200
        assert (await resp.json())["error"]["exception_type"] == "MemoryError"
    await ws.close()
