"""Request limits on every route: body size (chunked too), JSON depth and strictness, and
every error a JSON body, never a plain-text 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from PIL import Image as PILImage

import nodes.comfyui.importer  # noqa: F401 - ComfyUI's prompt format for POST /prompt
from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.server import create_app
from graph_runtime.server.limits import MAX_JSON_BODY_BYTES, body_limits_middleware
from tests.support.toy_nodes import CANVAS, image_workflow, toy_registry

pytestmark = pytest.mark.asyncio

DEEP = "[" * 990 + "]" * 990
JSON_ROUTES = [("POST", "/api/prompt"), ("POST", "/prompt"), ("PUT", "/api/workflows/w"),
               ("POST", "/api/interrupt"), ("POST", "/interrupt"), ("POST", "/queue"),
               ("POST", "/history"), ("POST", "/free"), ("POST", "/api/queue")]


async def error_of(resp: Any, status: int, both_shapes: bool = True) -> dict[str, Any]:
    """The one error of a refused request, in our shape (and ComfyUI's, for the errors
    answered before a handler)."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    (error,) = body["errors"]
    assert set(error) == {"node", "input", "code", "message"}
    if both_shapes:
        assert body["error"]["type"] == error["code"] and body["node_errors"] == {}
    return error


async def chunks(total: int, size: int = 2**20) -> AsyncIterator[bytes]:
    """A body sent chunked (no Content-Length), as a streaming client sends it."""
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


async def test_a_chunked_body_over_the_limit_is_refused(client: Any, folders: dict) -> None:
    resp = await client.put("/api/workflows/big", data=chunks(20 * 2**20))
    error = await error_of(resp, 413)
    assert error["code"] == "too_large" and str(MAX_JSON_BODY_BYTES) in error["message"]
    assert not (folders["user"] / "workflows" / "big.json").exists()


async def test_a_declared_body_over_the_limit_is_refused(client: Any) -> None:
    body = b'{"workflow": "' + b"x" * MAX_JSON_BODY_BYTES + b'"}'
    assert (await error_of(await client.post("/api/prompt", data=body), 413))["code"] \
        == "too_large"
    resp = await client.put("/api/workflows/fits",
                            data=json.dumps(image_workflow()) + " " * 2**20)
    assert resp.status == 200  # a body within the limit is read as before


async def test_import_has_its_own_larger_limit(client: Any) -> None:
    body = json.dumps(image_workflow()).encode() + b" " * (MAX_JSON_BODY_BYTES + 2**20)
    resp = await client.post("/api/workflows/import", data=chunks_of(body))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["workflow"]["nodes"]["1"]["type"] == "Gradient"


def chunks_of(body: bytes) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 2**20):
            yield body[i:i + 2**20]
    return gen()


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_deep_json_is_refused_on_every_route(client: Any, method: str, path: str) -> None:
    resp = await client.request(method, path, data=DEEP)
    assert (await error_of(resp, 400))["code"] == "too_deep"
    wrapped = '{"prompt": ' + DEEP + ', "workflow": ' + DEEP + "}"
    resp = await client.request(method, path, data=wrapped)
    assert (await error_of(resp, 400))["code"] == "too_deep"


@pytest.mark.parametrize("bad", ["NaN", "-Infinity", "1e400", '"\\ud800"', "1" * 5000])
async def test_json_that_breaks_later_is_refused(client: Any, bad: str) -> None:
    for path in ("/api/prompt", "/prompt"):
        resp = await client.post(path, data='{"workflow": {"n": ' + bad + '}, "prompt": 1}')
        error = await error_of(resp, 400)
        assert error["code"] == "invalid_json"


async def test_malformed_json_is_a_json_error(client: Any) -> None:
    for method, path in JSON_ROUTES:
        resp = await client.request(method, path, data="{not json")
        assert resp.status == 400, (path, await resp.text())
        assert (await resp.json())["errors"][0]["code"] == "invalid_json"


async def test_a_form_body_reaches_its_handler(client: Any) -> None:
    resp = await client.post("/api/interrupt", data={"a": "b"})
    assert resp.status == 200 and (await resp.json()) == {"interrupted": None}


async def test_hostile_ids_and_numbers_get_structured_errors(client: Any) -> None:
    workflow = image_workflow()
    workflow["nodes"]["²"] = {"type": "Number", "inputs": {"value": 10**400}}
    workflow["nodes"]["1"]["inputs"]["size"] = 64.0
    resp = await client.post("/api/prompt", json={"workflow": workflow})
    assert resp.status == 400
    errors = {(e["node"], e["input"], e["code"]) for e in (await resp.json())["errors"]}
    assert errors == {("²", "value", "value_out_of_range"),
                      ("1", "size", "invalid_value_type")}
    message = next(e["message"] for e in (await resp.json())["errors"] if e["node"] == "²")
    assert "401 digits" in message and len(message) < 200
    prompt = {"²": {"class_type": "Gradient", "inputs": {"size": 10**400}},
              "١": {"class_type": "SavePicture", "inputs": {"image": ["²", 0]}}}
    resp = await client.post("/prompt", json={"prompt": prompt})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(body["node_errors"]) == {"²"}


@pytest.mark.parametrize("number", [10**400, "nan", "inf", [1]])
async def test_comfy_number_must_be_finite(client: Any, number: Any) -> None:
    prompt = {"1": {"class_type": "Gradient", "inputs": {"size": 16}},
              "2": {"class_type": "SavePicture", "inputs": {"image": ["1", 0]}}}
    resp = await client.post("/prompt", json={"prompt": prompt, "number": number})
    assert resp.status == 400
    assert (await resp.json())["error"]["type"] == "invalid_prompt"


async def test_unknown_paths_and_methods_answer_json(client: Any) -> None:
    assert (await error_of(await client.get("/api/nothing"), 404))["code"] == "not_found"
    resp = await client.delete("/api/nodes")
    assert (await error_of(resp, 405))["code"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]


async def test_uploads_keep_their_own_limit(tmp_path: Path, aiohttp_client: Any) -> None:
    folders = Folders(output=tmp_path / "o", input=tmp_path / "i", models=tmp_path / "m",
                      user=tmp_path / "u", temp_dir=tmp_path / "t")
    app = create_app(Executor(toy_registry(CANVAS), folders=folders),
                     max_upload_bytes=16 * 2**20)
    client = await aiohttp_client(app)
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_JSON_BODY_BYTES + 2**20)
    resp = await client.post("/api/upload/image", data={"image": big})
    error = await error_of(resp, 400, both_shapes=False)
    assert error["code"] == "invalid_image"  # read whole by its handler, not cut at 8 MiB


async def test_an_escaping_exception_is_a_json_500(aiohttp_client: Any) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app = web.Application(middlewares=[body_limits_middleware()])
    app.router.add_post("/x", broken)
    client = await aiohttp_client(app)
    error = await error_of(await client.post("/x", json={}), 500)
    assert error["code"] == "internal_error" and "boom" not in error["message"]


@pytest.mark.parametrize("quality", ["²", "9" * 5000])
async def test_a_preview_quality_that_is_no_number_is_ignored(client: Any, folders: dict,
                                                              quality: str) -> None:
    PILImage.new("RGB", (4, 4)).save(folders["output"] / "p.png")
    resp = await client.get("/view", params={"filename": "p.png", "type": "output",
                                             "preview": f"webp;{quality}"})
    assert resp.status == 200 and resp.content_type == "image/webp"
