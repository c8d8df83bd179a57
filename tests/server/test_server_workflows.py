"""Saved workflows: user folder read/write, shipped folder read-only, names can't escape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from graph_runtime import workflow
from tests.support.toy_nodes import image_workflow

pytestmark = pytest.mark.asyncio


async def test_list_has_user_and_shipped(client: Any, folders: dict) -> None:
    resp = await client.put("/api/workflows/mine", json=image_workflow())
    assert resp.status == 200
    data = await (await client.get("/api/workflows")).json()
    pairs = {(w["name"], w["source"]) for w in data["workflows"]}
    assert pairs == {("mine", "user"), ("shipped_one", "shipped")}
    shipped = [w for w in data["workflows"] if w["source"] == "shipped"][0]
    assert shipped["description"] == "shipped"


async def test_put_get_roundtrip_is_lossless(client: Any, folders: dict) -> None:
    wf = image_workflow()
    wf["ui"] = {"groups": [{"title": "G", "bounding": [0, 0, 10, 10]}],
                "viewport": {"offset": [1, 2], "scale": 0.8}}
    wf["future_key"] = {"kept": True}
    assert (await client.put("/api/workflows/Round trip.json", json=wf)).status == 200
    assert (folders["user"] / "workflows" / "Round trip.json").is_file()
    got = await (await client.get("/api/workflows/Round trip")).json()
    assert got == wf


async def test_user_shadows_shipped_and_shipped_is_read_only(client: Any,
                                                             folders: dict) -> None:
    wf = image_workflow()
    assert (await client.delete("/api/workflows/shipped_one")).status == 403
    await client.put("/api/workflows/shipped_one", json=wf)
    assert (await (await client.get("/api/workflows/shipped_one")).json()) == wf
    shipped = await (await client.get("/api/workflows/shipped_one?source=shipped")).json()
    assert shipped["description"] == "shipped"
    assert json.loads((folders["workflows"] / "shipped_one.json").read_text())["nodes"] == {}
    resp = await client.delete("/api/workflows/shipped_one")
    assert (await resp.json()) == {"deleted": "shipped_one"}
    assert (await (await client.get("/api/workflows/shipped_one")).json())["nodes"] == {}


async def test_delete_and_missing(client: Any) -> None:
    await client.put("/api/workflows/tmp", json=image_workflow())
    assert (await client.delete("/api/workflows/tmp")).status == 200
    assert (await client.get("/api/workflows/tmp")).status == 404
    assert (await client.delete("/api/workflows/tmp")).status == 404


@pytest.mark.parametrize("name", ["..", "...", ".hidden", "a..b", "%2e%2e", "a%2fb",
                                  "x" * 101, "a\\b", "-dash", "sp "])
async def test_bad_names_refused(client: Any, folders: dict, name: str) -> None:
    from urllib.parse import quote

    path = f"/api/workflows/{quote(name, safe='%')}"
    assert (await client.put(path, json=image_workflow())).status in (400, 404)
    assert (await client.get(path)).status in (400, 404)
    assert not any((folders["user"]).rglob("*.json"))


async def test_traversal_in_path_segments(client: Any, folders: dict) -> None:
    for path in ("/api/workflows/../../secret", "/api/workflows/%2e%2e%2fsecret",
                 "/api/workflows/..%2F..%2Fsecret"):
        resp = await client.put(path, json=image_workflow())
        assert resp.status in (400, 404, 405)
    assert not (folders["user"].parent / "secret.json").exists()


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"format": "noodle.workflow", "version": 9,'
                                  b' "nodes": {}}', b'{"format": "noodle.workflow", '
                                  b'"version": 1, "nodes": {"1": {"inputs": {}}}}'])
async def test_put_rejects_malformed(client: Any, body: bytes) -> None:
    resp = await client.put("/api/workflows/bad", data=body,
                            headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await client.get("/api/workflows/bad")).status == 404


def rename_old_gradient(data: dict[str, Any]) -> dict[str, Any]:
    """A library upgrade as `register_upgrade` takes: type OldGradient with input
    "count" became Gradient with input "steps"."""
    nodes = {nid: {**nd, "type": "Gradient",
                   "inputs": {("steps" if k == "count" else k): v
                              for k, v in nd["inputs"].items()}}
             if nd["type"] == "OldGradient" else nd for nid, nd in data["nodes"].items()}
    return {**data, "nodes": nodes}


async def test_get_answers_a_saved_v1_file_upgraded(client: Any, folders: dict,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workflow, "_UPGRADES", [*workflow._UPGRADES, rename_old_gradient])
    old = image_workflow(steps=5)
    old["nodes"]["1"]["type"] = "OldGradient"
    old["nodes"]["1"]["inputs"]["count"] = old["nodes"]["1"]["inputs"].pop("steps")
    old["future_key"] = [1]
    (folders["user"] / "workflows").mkdir(exist_ok=True)
    (folders["user"] / "workflows" / "old.json").write_text(json.dumps(old))
    got = await (await client.get("/api/workflows/old")).json()
    assert got == image_workflow(steps=5) | {"future_key": [1]}
    assert json.loads((folders["user"] / "workflows" / "old.json").read_text()) == old


async def test_get_answers_a_file_that_is_not_v1_as_written(client: Any,
                                                            folders: dict) -> None:
    other = {"last_node_id": 2, "nodes": [], "links": []}  # another tool's file
    (folders["workflows"] / "theirs.json").write_text(json.dumps(other))
    assert (await (await client.get("/api/workflows/theirs")).json()) == other
