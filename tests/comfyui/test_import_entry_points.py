"""Where ComfyUI files come in: `noodle import`, `noodle run` / `validate` given a ComfyUI
file or PNG, and the canvas's `POST /api/workflows/import`. The command runs in process
with its registry swapped for test nodes (the stand-ins, or the toy nodes for a real run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from graph_runtime import Folders
from graph_runtime import cli as cli_module
from graph_runtime.executor import Executor
from graph_runtime.registry import Registry
from graph_runtime.server import create_app
from graph_runtime.workflow import import_workflow, load_workflow
from tests.comfyui.test_import_api_png import API_PROMPT, png
from tests.support.comfy_standins import REG, txt2img, ui_node
from tests.support.toy_nodes import CANVAS, toy_registry

IMPORTER = "nodes.comfyui.importer"
TOY_PROMPT = {"1": {"class_type": "Number", "inputs": {"value": 7}, "_meta": {"title": "N"}},
              "2": {"class_type": "AddInt", "inputs": {"a": ["1", 0], "b": 5}},
              "3": {"class_type": "ShowInt", "inputs": {"value": ["2", 0]}}}


def noodle(monkeypatch: pytest.MonkeyPatch, registry: Registry, *args: str) -> int:
    monkeypatch.setattr(cli_module, "REGISTRY", registry)
    return cli_module.main([*args, "--nodes", IMPORTER])


def test_import_writes_the_v1_workflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "from comfy.json"
    source.write_text(json.dumps(txt2img()))
    out = tmp_path / "converted.json"
    assert noodle(monkeypatch, REG, "import", str(source), "-o", str(out)) == 0
    written = load_workflow(out)
    expected = import_workflow(txt2img(), REG)[0]
    assert written.nodes == expected.nodes and written.name == "from comfy"
    assert "wrote" in capsys.readouterr().err
    assert noodle(monkeypatch, REG, "import", str(source)) == 0
    assert json.loads(capsys.readouterr().out)["nodes"] == expected.nodes


def test_import_lists_what_does_not_validate_yet(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    doc = txt2img()
    doc["nodes"].append(ui_node(30, "CustomUpscaler", widgets=[2]))
    source = tmp_path / "custom.json"
    source.write_text(json.dumps(doc))
    assert noodle(monkeypatch, REG, "import", str(source), "-o", str(tmp_path / "o.json")) == 0
    err = capsys.readouterr().err
    assert "node 30: [unknown_node_type]" in err and "CustomUpscaler" in err


def test_import_of_an_unreadable_file_names_file_and_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": [], "links": [[1, 2]]}')
    assert noodle(monkeypatch, REG, "import", str(bad)) == 2
    assert f"{bad} links[0]" in capsys.readouterr().err


def test_validate_accepts_comfyui_files_and_pngs(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ui.json").write_text(json.dumps(txt2img()))
    (tmp_path / "api.json").write_text(json.dumps(API_PROMPT))
    (tmp_path / "image.png").write_bytes(png(workflow=json.dumps(txt2img())))
    for name in ("ui.json", "api.json", "image.png"):
        assert noodle(monkeypatch, REG, "validate", str(tmp_path / name), "--json") == 0, name
        assert json.loads(capsys.readouterr().out) == {"ok": True, "errors": []}
    broken = dict(API_PROMPT, **{"10": {"class_type": "Mystery", "inputs": {}}})
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    assert noodle(monkeypatch, REG, "validate", str(tmp_path / "broken.json"), "--json") == 2
    errors = json.loads(capsys.readouterr().out)["errors"]
    assert [(e["node"], e["code"]) for e in errors] == [("10", "unknown_node_type")]


@pytest.mark.parametrize("kind", ["json", "png"])
def test_run_accepts_a_comfyui_prompt(kind: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / f"prompt.{kind}"
    text = json.dumps(TOY_PROMPT)
    if kind == "png":
        source.write_bytes(png(prompt=text))
    else:
        source.write_text(text)
    code = noodle(monkeypatch, toy_registry(CANVAS), "run", str(source), "--set", "1.value=9",
                  "--output-dir", str(tmp_path / "out"))
    assert code == 0
    assert "#3 text: 14" in capsys.readouterr().out


# ---------------------------------------------------------------- the canvas's route
@pytest_asyncio.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Any:
    folders = Folders(output=tmp_path / "output", input=tmp_path / "input",
                      models=tmp_path / "models", user=tmp_path / "user",
                      temp_dir=tmp_path / "temp")
    return await aiohttp_client(create_app(Executor(REG, folders=folders)))


@pytest.mark.asyncio
async def test_import_route_converts_json_and_png(client: Any) -> None:
    resp = await client.post("/api/workflows/import", data=json.dumps(txt2img()),
                             headers={"Content-Type": "application/json"})
    assert resp.status == 200
    body = await resp.json()
    assert body["format"] == "comfyui-ui"
    assert body["workflow"]["nodes"] == import_workflow(txt2img(), REG)[0].nodes
    resp = await client.post("/api/workflows/import", data=png(prompt=json.dumps(API_PROMPT)),
                             headers={"Content-Type": "image/png"})
    body = await resp.json()
    assert resp.status == 200 and body["format"] == "png"
    assert list(body["workflow"]["nodes"]) == list(API_PROMPT)


@pytest.mark.asyncio
async def test_import_route_refuses_what_it_cannot_read(client: Any) -> None:
    resp = await client.post("/api/workflows/import", data=png(Software="paint"))
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["code"] == "invalid_format"
    resp = await client.post("/api/workflows/import", data=b"")
    assert resp.status == 400
    resp = await client.post("/api/workflows/import", data=b"{}",
                             headers={"Origin": "http://evil.example"})
    assert resp.status == 403
