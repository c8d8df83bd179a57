"""What the canvas's queue and history panel reads: clearing only the pending prompts, and a
history entry's workflow being exactly the document that was queued (so "Load workflow"
restores the graph that ran, layout and all)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.noodle_api import wait_history
from tests.support.toy_nodes import image_workflow
from tests.support.workflows import link, workflow_dict

pytestmark = pytest.mark.asyncio


async def test_clear_pending_leaves_the_running_prompt(client: Any) -> None:
    slow = await (await client.post("/api/prompt", json={
        "workflow": image_workflow(steps=200, delay=0.02)})).json()
    waiting = [await (await client.post("/api/prompt", json={
        "workflow": image_workflow(seed=s)})).json() for s in (3, 4)]
    for _ in range(200):
        q = await (await client.get("/api/queue")).json()
        if q["running"]:
            break
        await asyncio.sleep(0.02)
    assert [p["prompt_id"] for p in q["pending"]] == [w["prompt_id"] for w in waiting]
    resp = await client.delete("/api/queue")
    assert resp.status == 200
    assert (await resp.json()) == {"removed": 2}
    q = await (await client.get("/api/queue")).json()
    assert q["pending"] == [] and q["running"][0]["prompt_id"] == slow["prompt_id"]
    assert (await (await client.delete("/api/queue")).json()) == {"removed": 0}
    await client.post("/api/interrupt", json={"prompt_id": slow["prompt_id"]})
    assert (await wait_history(client, slow["prompt_id"]))["status"] == "interrupted"
    for w in waiting:
        assert (await client.get(f"/api/history/{w['prompt_id']}")).status == 404


async def test_history_keeps_the_queued_document_exactly(client: Any) -> None:
    doc = workflow_dict({
        "1": ("Number", {"value": 6}, {"ui": {"pos": [12.5, 40], "size": [210, 80],
                                              "title": "Six", "collapsed": False}}),
        "2": ("AddInt", {"a": link("1", "value"), "b": 2}, {"mode": "bypass",
                                                           "ui": {"pos": [300, 40]}}),
        "3": ("ShowInt", {"value": link("2", "value")},
              {"ui": {"pos": [600, 40], "control_after_run": {}}, "note": "kept"}),
    }, name="sums", description="three nodes",
        ui={"groups": [{"title": "G", "bounding": [0, 0, 900, 300], "color": "#3f789e"}],
            "viewport": {"offset": [5, -7], "scale": 0.9}}, extra_key={"any": [1, 2]})
    pid = (await (await client.post("/api/prompt", json={"workflow": doc})).json())["prompt_id"]
    one = await wait_history(client, pid)
    assert one["workflow"] == doc
    resp = await client.get("/api/history", params={"limit": "5"})
    listed = {e["prompt_id"]: e for e in await resp.json()}
    assert listed[pid]["workflow"] == doc
    assert listed[pid]["status"] == "success"
    assert int(resp.headers["X-Total-Count"]) >= 1
