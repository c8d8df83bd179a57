"""ComfyUI's file routes: /upload/image keeps the client's name under its rules, /view takes
folder-annotated names, previews and channels; our own upload stays content-addressed."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from PIL import Image

from tests.support.comfy_api import comfy_app

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Any:
    return await aiohttp_client(comfy_app(tmp_path))


def png(colour: str = "red", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (6, 4), colour).save(buf, format="PNG")
    return buf.getvalue()


async def upload(client: Any, data: bytes, name: str = "cat.png", path: str = "/upload/image",
                 **fields: str) -> Any:
    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("image", data, filename=name, content_type="image/png")
    return await client.post(path, data=form)


async def test_upload_keeps_name_reuses_and_renames(client: Any, tmp_path: Path) -> None:
    first = await upload(client, png(), client_id="ignored")
    assert first.status == 200
    assert await first.json() == {"name": "cat.png", "subfolder": "", "type": "input"}
    again = await (await upload(client, png())).json()
    assert again["name"] == "cat.png"
    other = await (await upload(client, png("blue"))).json()
    assert other["name"] == "cat (1).png"
    third = await (await upload(client, png("green"))).json()
    assert third["name"] == "cat (2).png"
    replaced = await (await upload(client, png("white"), overwrite="true")).json()
    assert replaced["name"] == "cat.png"
    with Image.open(tmp_path / "input" / "cat.png") as img:
        assert img.getpixel((0, 0)) == (255, 255, 255)
    assert sorted(p.name for p in (tmp_path / "input").iterdir()) == [
        "cat (1).png", "cat (2).png", "cat.png"]


async def test_upload_subfolder_and_type(client: Any, tmp_path: Path) -> None:
    resp = await upload(client, png(), "m.png", subfolder="masks/a", type="temp")
    assert await resp.json() == {"name": "m.png", "subfolder": "masks/a", "type": "temp"}
    assert (tmp_path / "temp" / "masks" / "a" / "m.png").is_file()
    view = await client.get("/view", params={"filename": "m.png", "subfolder": "masks/a",
                                             "type": "temp"})
    assert view.status == 200


@pytest.mark.parametrize("name,fields", [("../evil.png", {}), ("a/b.png", {}),
                                         ("ok.png", {"subfolder": "../.."}),
                                         ("ok.png", {"subfolder": "/etc"}),
                                         ("ok.png", {"type": "models"})])
async def test_upload_refuses_escapes(client: Any, tmp_path: Path, name: str,
                                      fields: dict[str, str]) -> None:
    resp = await upload(client, png(), name, **fields)
    assert resp.status == 400
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "ok.png").exists()


async def test_upload_refuses_non_images_and_large_files(client: Any, tmp_path: Path) -> None:
    assert (await upload(client, b"<svg/>", "x.png")).status == 400
    assert (await upload(client, png() + b"\0" * (2**20 + 10))).status == 413
    assert list((tmp_path / "input").iterdir()) == []


async def test_our_upload_route_stays_content_addressed(client: Any) -> None:
    body = await (await upload(client, png(), "cat.png", path="/api/upload/image")).json()
    assert body["name"] != "cat.png" and len(body["name"]) == 36


async def test_view_annotations_previews_and_channels(client: Any, tmp_path: Path) -> None:
    (tmp_path / "input" / "rgba.png").write_bytes(png((10, 20, 30, 40), "RGBA"))
    resp = await client.get("/view", params={"filename": "rgba.png [input]"})
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
    webp = await client.get("/view", params={"filename": "rgba.png", "type": "input",
                                             "preview": "webp;80"})
    assert webp.headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(await webp.read())).format == "WEBP"
    jpeg = await client.get("/api/view", params={"filename": "rgba.png", "type": "input",
                                                 "preview": "jpeg;50"})
    assert Image.open(io.BytesIO(await jpeg.read())).format == "JPEG"
    rgb = await client.get("/view", params={"filename": "rgba.png", "type": "input",
                                            "channel": "rgb"})
    assert Image.open(io.BytesIO(await rgb.read())).mode == "RGB"
    alpha = await client.get("/view", params={"filename": "rgba.png", "type": "input",
                                              "channel": "a"})
    img = Image.open(io.BytesIO(await alpha.read()))
    assert img.mode == "RGBA" and img.getpixel((0, 0)) == (0, 0, 0, 40)
    assert (await client.get("/view", params={"filename": "nope.png"})).status == 404
    assert (await client.get("/view", params={"filename": "x.png", "type": "models"})
            ).status == 400
