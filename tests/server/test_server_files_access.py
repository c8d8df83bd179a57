"""Where nodes may read and write: a server run reads only its input and model folders (and
the shipped images), one error for absent, unreadable and forbidden files, save prefixes
that cannot leave the output folder, and no write through a link out of it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import nodes  # noqa: F401 - registers the node library
from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from graph_runtime.server import create_app
from graph_runtime.workflow import from_dict
from nodes.diffusion.hub import ModelNotFoundError
from nodes.files import NumberedFiles, UnavailableFile, check_prefix, may_read
from nodes.images import load_image, resolve_image_path
from nodes.loaders import BUNDLED_MODELS, resolve
from tests.support.command import noodle_env
from tests.support.paths import REPO
from tests.support.workflows import link, workflow_dict


def png(path: Path, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A real image outside every folder a run may read."""
    return png(tmp_path / "secret" / "private.png", "blue")


def confined(run_folders: Folders, *allowed: Path) -> Folders:
    return Folders(output=run_folders.output, input=run_folders.input,
                   models=run_folders.models, temp_dir=run_folders.temp,
                   allowed_paths=tuple(allowed))


def load_error(name: str, folders: Folders) -> str:
    with pytest.raises(UnavailableFile) as info:
        resolve_image_path(name, folders)
    return str(info.value)


# ---------------------------------------------------------------------------- reading images
def test_confined_runs_read_images_only_from_their_folders(run_folders: Folders,
                                                           outside: Path) -> None:
    folders = confined(run_folders)
    inside = png(run_folders.input / "sub" / "ok.png")
    assert resolve_image_path("sub/ok.png", folders) == inside
    assert resolve_image_path(str(inside), folders) == inside
    shipped = resolve_image_path("workflows/images/red_circle.png", folders)
    assert shipped.is_file()
    # Present but outside, absent, climbing out, the project's own files: one message each,
    # differing only by the name asked for.
    for name in (str(outside), "../secret/private.png", "sub/../../secret/private.png",
                 "pyproject.toml", "nodes/../workflows/images/red_circle.png"):
        assert load_error(name, folders) == f"LoadImage: no readable image {name!r} in the " \
                                            "input folder"
    assert load_error(str(outside), folders).replace(str(outside), "X") == \
        load_error(str(outside.with_name("absent.png")), folders).replace(
            str(outside.with_name("absent.png")), "X")


def test_allowed_paths_and_unconfined_calls_read_elsewhere(run_folders: Folders,
                                                          outside: Path) -> None:
    assert resolve_image_path(str(outside), confined(run_folders, outside.parent)) == outside
    assert resolve_image_path(str(outside), run_folders) == outside  # a program's own call


def test_unreadable_image_gives_the_missing_file_error(run_folders: Folders,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (run_folders.input / "broken.png").write_bytes(b"\x89PNG not really")
    monkeypatch.setattr("nodes.images.folders", lambda: confined(run_folders))
    with pytest.raises(UnavailableFile) as info:
        load_image("broken.png")
    assert str(info.value) == "LoadImage: no readable image 'broken.png' in the input folder"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_may_read_is_by_the_spelled_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert may_read(root / "a" / "b.png", [root])
    assert not may_read(root / ".." / "x.png", [root])
    assert not may_read(tmp_path / "rootless.png", [root])  # a prefix is not a parent
    assert not may_read(Path("a\x00b"), [Path.cwd()])
    assert may_read(tmp_path / "anything", None)


# ---------------------------------------------------------------------------- reading models
def test_confined_sources_stay_in_the_model_folders(run_folders: Folders, tmp_path: Path) -> None:
    folders = confined(run_folders)
    elsewhere = tmp_path / "elsewhere-model"
    shutil.copytree(BUNDLED_MODELS / "noodle-tiny" / "scheduler", elsewhere / "scheduler")
    assert resolve("tiny-model", folders) == run_folders.models / "tiny-model"
    assert resolve("noodle-tiny", folders) == BUNDLED_MODELS / "noodle-tiny"
    messages = []
    for source in (str(elsewhere), str(tmp_path / "absent-model"), "../elsewhere-model",
                   "/etc", "~"):
        with pytest.raises(ModelNotFoundError) as info:
            resolve(source, folders)
        messages.append(str(info.value).replace(repr(source), "X"))
    assert len(set(messages)) == 1, messages
    assert resolve(str(elsewhere), confined(run_folders, elsewhere)) == elsewhere
    assert resolve(str(elsewhere), run_folders) == elsewhere  # unconfined: as before


# ---------------------------------------------------------------------------- writing
@pytest.mark.parametrize("prefix", ["../up", "/abs/x", "a/../../b", "new\nline", "tab\there",
                                    "bell\x07", "\\\\server\\share"])
def test_bad_save_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="filename_prefix"):
        check_prefix(prefix)


def test_writes_do_not_follow_links_out_of_the_folder(tmp_path: Path) -> None:
    out, away = tmp_path / "out", tmp_path / "away"
    out.mkdir()
    away.mkdir()
    os.symlink(away, out / "link")
    with pytest.raises(ValueError, match="outside"):
        NumberedFiles(out, "link/x", ".png")
    with pytest.raises(ValueError, match="outside"):
        NumberedFiles(out, "link/new/deeper/x", ".png")
    assert list(away.iterdir()) == []
    files = NumberedFiles(out, "sub/x", ".txt")
    os.symlink(away / "stolen.txt", out / "sub" / "x_00001.txt")  # a planted file link
    written = files.write(lambda fh: fh.write(b"data"))
    assert written == out / "sub" / "x_00002.txt" and not (away / "stolen.txt").exists()


# ---------------------------------------------------------------------------- through the server
def load_and_save(image: str, prefix: str = "copied") -> dict[str, Any]:
    return workflow_dict({"1": ("LoadImage", {"image": image}),
                          "2": ("SaveImage", {"images": link("1", "IMAGE"),
                                              "filename_prefix": prefix})})


async def run_prompt(client: Any, workflow: dict[str, Any]) -> dict[str, Any]:
    resp = await client.post("/api/prompt", json={"workflow": workflow})
    assert resp.status == 200, await resp.text()
    pid = (await resp.json())["prompt_id"]
    for _ in range(400):
        got = await client.get(f"/api/history/{pid}")
        if got.status == 200:
            return await got.json()
        await asyncio.sleep(0.05)
    raise AssertionError("the prompt did not finish")


@pytest.mark.asyncio
async def test_server_runs_cannot_copy_files_out(aiohttp_client: Any, run_folders: Folders,
                                                 outside: Path) -> None:
    assert from_dict(load_and_save("x")).nodes  # the workflow is well formed
    client = await aiohttp_client(create_app(Executor(REGISTRY, folders=run_folders)))
    png(run_folders.input / "mine.png")
    ok = await run_prompt(client, load_and_save("mine.png"))
    assert ok["status"] == "success"
    stolen = await run_prompt(client, load_and_save(str(outside), "stolen"))
    absent = await run_prompt(client, load_and_save(str(outside.with_name("none.png")),
                                                    "stolen"))
    assert stolen["status"] == absent["status"] == "error"
    assert stolen["error"]["message"].replace(str(outside), "X") == \
        absent["error"]["message"].replace(str(outside.with_name("none.png")), "X")
    assert not list(run_folders.output.glob("stolen*"))
    bad_prefix = await run_prompt(client, load_and_save("mine.png", "../escaped"))
    assert bad_prefix["status"] == "error"
    assert not list(run_folders.output.parent.glob("escaped*"))


# ---------------------------------------------------------------------------- changed on disk
# Run in a subprocess: were the weights still views of the file, truncating it would kill
# the process (SIGBUS), and with it the test run.
CHANGED_ON_DISK = r'''
import json, shutil, sys
from pathlib import Path

import nodes
from graph_runtime import Folders
from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from graph_runtime.workflow import from_dict
from nodes.loaders import BUNDLED_MODELS

root = Path(sys.argv[1])
shutil.copytree(BUNDLED_MODELS / "noodle-tiny", root / "models" / "tiny")
data = json.loads(Path("workflows/txt2img.json").read_text())
data["nodes"]["1"]["inputs"]["source"] = "tiny"
data["nodes"]["4"]["inputs"].update(width=32, height=32)
data["nodes"]["5"]["inputs"]["steps"] = 2
weights = root / "models" / "tiny" / "unet" / "diffusion_pytorch_model.safetensors"
good = weights.read_bytes()

def cut(event):
    if event["type"] == "node_finished" and event["node"] == "1":  # loaded, not yet used
        with open(weights, "r+b") as fh:
            fh.truncate(len(good) // 3)

folders = Folders(output=root / "out", input=root / "in", models=root / "models").confined()
executor = Executor(REGISTRY, folders=folders)
runs = [executor.run(from_dict(data), on_event=cut), executor.run(from_dict(data))]
weights.write_bytes(good)
runs.append(executor.run(from_dict(data)))
report = [{"ok": r.ok, "error": (r.error or {}).get("message")} for r in runs]

# Opened (header read), then cut before the tensors are read: an error, not a crash.
from nodes.diffusion.storage import WeightsError, read_safetensors
weights_file = read_safetensors(weights)
with open(weights, "r+b") as fh:
    fh.truncate(len(good) // 2)
try:
    dict(weights_file)
    report.append({"ok": True, "error": None})
except WeightsError as exc:
    report.append({"ok": False, "error": str(exc)})
print(json.dumps(report))
'''


def test_a_model_file_truncated_in_use_is_an_error_not_a_crash(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CHANGED_ON_DISK, str(tmp_path)],
                          cwd=REPO, env=noodle_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    in_use, reloaded, restored, cut_while_open = json.loads(proc.stdout.strip().splitlines()[-1])
    assert in_use["ok"], in_use  # the weights it loaded are its own: the run completes
    assert not reloaded["ok"] and "shorter than its header" in reloaded["error"]
    assert restored["ok"], restored  # the same process serves the next run
    assert not cut_while_open["ok"] and "ended early" in cut_while_open["error"]


# ---------------------------------------------------------------------------- the command
def test_noodle_run_reads_the_working_directory_and_allowed_paths(
        tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from graph_runtime import cli

    work = tmp_path / "work"
    png(work / "here.png")
    monkeypatch.chdir(work)
    monkeypatch.setattr(cli, "_install_sigint", lambda interrupt: None)

    def run(image: str, *extra: str) -> int:
        path = work / "wf.json"
        path.write_text(json.dumps(load_and_save(image)))
        return cli.main(["run", str(path), "--output-dir", str(tmp_path / "out"), *extra])

    assert run("here.png") == cli.EXIT_OK  # relative to the working directory
    assert run(str(work / "here.png")) == cli.EXIT_OK
    assert run(str(outside)) == cli.EXIT_FAILED
    assert run(str(outside), "--allow-path", str(outside.parent)) == cli.EXIT_OK
