"""Security: DNS rebinding, cross-origin writes, file serving escapes, upload checks."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import time
import uuid
import zlib
from typing import Annotated, Any

import aiohttp
import pytest
from PIL import Image

from graph_runtime import Float, Folders, Registry, current, node
from graph_runtime.executor import Executor
from graph_runtime.server import create_app
from graph_runtime.server.app import HUB_KEY
from graph_runtime.server.hub import (
    CLOSE_BAD_CLIENT_ID,
    CLOSE_TOO_SLOW,
    InvalidClientId,
    check_client_id,
)
from graph_runtime.server.security import is_loopback_name, split_host
from tests.support.comfy_api import gradient_prompt
from tests.support.toy_nodes import CANVAS, image_workflow, toy_registry
from tests.support.workflows import link, workflow_dict


def png_bytes(size: tuple[int, int] = (4, 3), colour: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming a huge size, with a tiny compressed body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


# ------------------------------------------------------------------ host / origin
def test_host_helpers() -> None:
    assert split_host("[::1]:8188") == "::1"
    assert split_host("LocalHost:80") == "localhost"
    assert all(map(is_loopback_name, ["localhost", "127.0.0.1", "127.1.2.3", "::1",
                                      "app.localhost"]))
    assert not any(map(is_loopback_name, ["evil.com", "10.0.0.1", "localhost.evil.com",
                                          "0.0.0.0", ""]))


@pytest.mark.parametrize("host", ["evil.example", "attacker.com:8188", "192.168.1.4",
                                  "localhost.evil.com", ""])
@pytest.mark.asyncio
async def test_foreign_host_refused(client: Any, host: str) -> None:
    resp = await client.get("/api/nodes", headers={"Host": host})
    assert resp.status == 403
    assert (await resp.json())["errors"][0]["code"] == "forbidden"


@pytest.mark.parametrize("host", ["localhost:8188", "127.0.0.1", "[::1]:9000"])
@pytest.mark.asyncio
async def test_loopback_hosts_accepted(client: Any, host: str) -> None:
    assert (await client.get("/api/nodes", headers={"Host": host})).status == 200


@pytest.mark.asyncio
async def test_non_loopback_bind_accepts_other_hosts(aiohttp_client: Any,
                                                     run_folders: Folders) -> None:
    app = create_app(Executor(toy_registry(CANVAS), folders=run_folders),
                     bind_host="0.0.0.0")
    c = await aiohttp_client(app)
    assert (await c.get("/api/nodes", headers={"Host": "box.lan:8188"})).status == 200
    resp = await c.post("/api/interrupt", headers={"Host": "box.lan:8188",
                                                   "Origin": "http://evil.example"})
    assert resp.status == 403


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:1",
                                    "https://127.0.0.1.evil.example"])
@pytest.mark.parametrize("method,path", [("POST", "/api/prompt"), ("POST", "/api/interrupt"),
                                         ("PUT", "/api/workflows/x"),
                                         ("DELETE", "/api/workflows/x"),
                                         ("DELETE", "/api/queue/x"),
                                         ("POST", "/api/upload/image")])
@pytest.mark.asyncio
async def test_cross_origin_writes_refused(client: Any, origin: str, method: str,
                                           path: str) -> None:
    resp = await client.request(method, path, headers={"Origin": origin}, json={})
    assert resp.status == 403


@pytest.mark.asyncio
async def test_same_origin_and_no_origin_allowed(client: Any) -> None:
    host = f"127.0.0.1:{client.port}"
    resp = await client.post("/api/interrupt", headers={"Origin": f"http://{host}"})
    assert resp.status == 200
    assert (await client.post("/api/interrupt")).status == 200
    resp = await client.post("/api/interrupt", headers={"Sec-Fetch-Site": "cross-site"})
    assert resp.status == 403


@pytest.mark.asyncio
async def test_cross_origin_websocket_refused(client: Any) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws?client_id=x", headers={"Origin": "http://evil.example"})
    assert info.value.status == 403


@pytest.mark.asyncio
async def test_cross_origin_read_gets_no_cors(client: Any) -> None:
    resp = await client.get("/api/nodes", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


# ------------------------------------------------------------------ /api/view
@pytest.mark.asyncio
async def test_view_serves_images_inline_and_others_as_attachments(client: Any,
                                                                   folders: dict) -> None:
    (folders["output"] / "a.png").write_bytes(png_bytes())
    (folders["output"] / "x.svg").write_text("<svg onload='alert(1)'/>")
    (folders["output"] / "p.html").write_text("<script>alert(1)</script>")
    (folders["input"] / "sub").mkdir()
    (folders["input"] / "sub" / "b.png").write_bytes(png_bytes())
    resp = await client.get("/api/view", params={"filename": "a.png"})
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Content-Disposition"].startswith("inline")
    for name in ("x.svg", "p.html"):
        resp = await client.get("/api/view", params={"filename": name, "type": "output"})
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Disposition"].startswith("attachment")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in resp.headers["Content-Security-Policy"]
    resp = await client.get("/api/view", params={"filename": "b.png", "type": "input",
                                                 "subfolder": "sub"})
    assert resp.status == 200


@pytest.mark.parametrize("query", [
    "filename=../secret.txt",
    "filename=secret.txt&subfolder=..",
    "filename=secret.txt&subfolder=../",
    "filename=secret.txt&subfolder=a/../..",
    "filename=%2e%2e%2fsecret.txt",
    "filename=secret.txt&subfolder=%2e%2e",
    "filename=%252e%252e%252fsecret.txt",
    "filename=secret.txt&subfolder=%252e%252e",
    "filename=..%5csecret.txt",
    "filename={abs}",
    "filename=secret.txt&subfolder={absdir}",
    "filename=a.png%00.txt",
    "filename=",
    "filename=a.png&type=models",
])
@pytest.mark.asyncio
async def test_view_refuses_escapes(client: Any, folders: dict, query: str) -> None:
    secret = folders["output"].parent / "secret.txt"
    secret.write_text("top secret")
    (folders["output"] / "a.png").write_bytes(png_bytes())
    query = query.replace("{abs}", str(secret)).replace("{absdir}", str(secret.parent))
    resp = await client.get(f"/api/view?{query}")
    assert resp.status in (400, 404)
    assert "top secret" not in await resp.text()


@pytest.mark.asyncio
async def test_view_refuses_symlink_escape(client: Any, folders: dict) -> None:
    secret = folders["output"].parent / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, folders["output"] / "link.png")
    os.symlink(folders["output"].parent, folders["output"] / "up")
    (folders["output"] / "ok.png").write_bytes(png_bytes())
    os.symlink(folders["output"] / "ok.png", folders["output"] / "inside.png")
    for params in ({"filename": "link.png"}, {"filename": "secret.txt", "subfolder": "up"}):
        resp = await client.get("/api/view", params=params)
        assert resp.status == 400
        assert "top secret" not in await resp.text()
    assert (await client.get("/api/view", params={"filename": "inside.png"})).status == 200


@pytest.mark.asyncio
async def test_view_missing_file(client: Any) -> None:
    assert (await client.get("/api/view", params={"filename": "nope.png"})).status == 404


# ------------------------------------------------------------------ uploads
async def upload(client: Any, data: bytes, name: str = "x.png", field: str = "image") -> Any:
    form = aiohttp.FormData()
    form.add_field(field, data, filename=name, content_type="image/png")
    return await client.post("/api/upload/image", data=form)


@pytest.mark.asyncio
async def test_upload_is_content_addressed(client: Any, folders: dict) -> None:
    data = png_bytes()
    r1 = await upload(client, data, "../../evil.png")
    assert r1.status == 200
    body = await r1.json()
    assert body["type"] == "input" and body["subfolder"] == ""
    assert body["name"].endswith(".png") and len(body["name"]) == 36
    assert (folders["input"] / body["name"]).read_bytes() == data
    r2 = await upload(client, data, "other-name.png")
    assert (await r2.json())["name"] == body["name"]
    assert len(list(folders["input"].iterdir())) == 1
    view = await client.get("/api/view", params={"filename": body["name"], "type": "input"})
    assert view.status == 200
    jpeg = io.BytesIO()
    Image.new("RGB", (5, 5)).save(jpeg, format="JPEG")
    assert (await (await upload(client, jpeg.getvalue())).json())["name"].endswith(".jpg")


@pytest.mark.parametrize("payload,code", [
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "invalid_image"),
    (b"<html><script>alert(1)</script></html>", "invalid_image"),
    (png_bytes()[:40], "invalid_image"),
    (bomb_png(30000, 30000), "invalid_image"),
    (b"", "invalid_request"),
])
@pytest.mark.asyncio
async def test_upload_rejects_non_images(client: Any, folders: dict, payload: bytes,
                                         code: str) -> None:
    resp = await upload(client, payload)
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == code
    assert list(folders["input"].iterdir()) == []


@pytest.mark.asyncio
async def test_upload_size_limit(client: Any, folders: dict) -> None:
    big = png_bytes() + b"\x00" * (2**20 + 10)  # the fixture's limit is 1 MiB
    resp = await upload(client, big)
    assert resp.status == 413
    assert list(folders["input"].iterdir()) == []


@pytest.mark.asyncio
async def test_upload_needs_multipart_and_field(client: Any) -> None:
    assert (await client.post("/api/upload/image", json={"image": "x"})).status == 400
    resp = await upload(client, png_bytes(), field="other")
    assert resp.status == 400


def test_bomb_fixture_is_a_real_png_header() -> None:
    with Image.open(io.BytesIO(bomb_png(300, 200))) as img:
        assert img.size == (300, 200)


# ------------------------------------------------------------------ websocket and client ids
@pytest.mark.parametrize("value,ok", [
    (None, True), ("", True), ("c1", True), (str(uuid.uuid4()), True), ("x" * 128, True),
    ("a.b:c~d_e-f", True), ("x" * 129, False), ("sp ace", False), ("é", False),
    ("a/b", False), ("<script>", False), (12, False), (["c1"], False)])
def test_one_client_id_rule(value: Any, ok: bool) -> None:
    if ok:
        assert check_client_id(value) == (value or None)
    else:
        with pytest.raises(InvalidClientId):
            check_client_id(value)


@pytest.mark.parametrize("bad", ["x" * 129, "has space", 7])
@pytest.mark.asyncio
async def test_bad_client_ids_are_refused_by_both_apis(client: Any, bad: Any) -> None:
    resp = await client.post("/api/prompt", json={"workflow": image_workflow(),
                                                  "client_id": bad})
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "invalid_client_id"
    resp = await client.post("/prompt", json={"prompt": gradient_prompt(), "client_id": bad})
    assert resp.status == 400
    assert "client_id" in (await resp.json())["error"]["details"]
    assert (await (await client.get("/api/queue")).json())["pending"] == []


@pytest.mark.parametrize("query", ["client_id=" + "x" * 129, "clientId=" + "y" * 129,
                                   "client_id=a%20b"])
@pytest.mark.asyncio
async def test_bad_client_id_socket_is_closed_with_a_code(client: Any, query: str) -> None:
    ws = await client.ws_connect(f"/ws?{query}")
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == CLOSE_BAD_CLIENT_ID
    assert "client_id" in msg.extra


@pytest.mark.asyncio
async def test_a_client_too_far_behind_is_closed_not_starved(client: Any, app: Any) -> None:
    hub = app[HUB_KEY]
    hub.outbox_limit = 5
    slow = await client.ws_connect("/ws?client_id=slow")
    fast = await client.ws_connect("/ws?client_id=fast")
    for ws in (slow, fast):
        assert (await ws.receive_json(timeout=5))["type"] == "status"
    for i in range(50):  # one burst: the sender cannot drain it in between
        hub.publish({"type": "tick", "data": {"i": i}}, "slow")
    for i in range(3):
        hub.publish({"type": "tick", "data": {"i": i}}, "fast")
    got = []
    while (msg := await slow.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
        got.append(msg.json()["data"]["i"])
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == CLOSE_TOO_SLOW
    assert "behind" in msg.extra
    assert got == list(range(len(got))) and len(got) <= 5  # in order, then closed
    assert [(await fast.receive_json(timeout=5))["data"]["i"] for _ in range(3)] == [0, 1, 2]
    assert hub.evictions == 1 and hub.connected() == ["fast"]
    await fast.close()


# ------------------------------------------------------------------ isolation during a run
def spin_registry() -> Registry:
    """The canvas toys plus `Spin`: pure-Python work for a while, checking for interrupt."""
    reg = toy_registry(CANVAS)

    @node("Spin", registry=reg, output_node=True)
    def spin(seconds: Annotated[float, Float(min=0.0, max=60.0)] = 1.0) -> None:
        """Busy for `seconds`."""
        ctx = current()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sum(i * i for i in range(2000))
            if ctx is not None:
                ctx.check_interrupt()

    return reg


async def timed(call: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    resp = await call
    await resp.read()
    return time.perf_counter() - start, resp


@pytest.mark.asyncio
async def test_queue_and_interrupt_answer_during_a_long_run(aiohttp_client: Any,
                                                            run_folders: Folders) -> None:
    c = await aiohttp_client(create_app(Executor(spin_registry(), folders=run_folders)))
    wf = workflow_dict({"1": ("Spin", {"seconds": 30.0})})
    pid = (await (await c.post("/api/prompt", json={"workflow": wf})).json())["prompt_id"]
    while not (await (await c.get("/api/queue")).json())["running"]:
        await asyncio.sleep(0.02)
    waits = []
    for _ in range(10):
        seconds, resp = await timed(c.get("/api/queue"))
        assert resp.status == 200
        waits.append(seconds)
        await asyncio.sleep(0.05)
    seconds, resp = await timed(c.post("/api/interrupt"))
    assert (await resp.json())["interrupted"] == pid
    assert max(waits) < 0.2 and seconds < 0.2, (waits, seconds)
    for _ in range(200):
        entry = await c.get(f"/api/history/{pid}")
        if entry.status == 200:
            break
        await asyncio.sleep(0.05)
    assert (await entry.json())["status"] == "interrupted"


@pytest.mark.asyncio
async def test_a_huge_power_is_refused_without_freezing(aiohttp_client: Any,
                                                        run_folders: Folders) -> None:
    import nodes  # noqa: F401 - registers IntMath
    from graph_runtime.registry import REGISTRY

    c = await aiohttp_client(create_app(Executor(REGISTRY, folders=run_folders)))
    wf = workflow_dict({"1": ("IntMath", {"a": 7, "b": 10**9, "operation": "power"}),
                        "2": ("ShowNumber", {"value": link("1", "value")})})
    resp = await c.post("/api/prompt", json={"workflow": wf})
    assert resp.status == 200, await resp.text()
    pid = (await resp.json())["prompt_id"]
    for _ in range(100):
        seconds, queue = await timed(c.get("/api/queue"))
        assert seconds < 0.2
        entry = await c.get(f"/api/history/{pid}")
        if entry.status == 200:
            break
        await asyncio.sleep(0.05)
    body = await entry.json()
    assert body["status"] == "error" and "bits" in body["error"]["message"]
