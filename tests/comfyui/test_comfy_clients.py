"""Real ComfyUI client libraries from PyPI, unmodified, against a real server running the
node library: ComfyUI's default graph (API format, `_meta` titles, the shipped tiny model,
64x64, 2 steps) queued, followed and downloaded the way each library does it."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from graph_runtime import REGISTRY, Folders
from graph_runtime.executor import Executor
from graph_runtime.server import create_app
from nodes.diffusion.ksampling.samplers import SAMPLER_NAMES
from tests.support.browser import ServerThread
from tests.support.paths import MODELS

simplified = pytest.importorskip("comfy_api_simplified")
toolkit = pytest.importorskip("comfy_toolkit")
requests = pytest.importorskip("requests")

DEFAULT_GRAPH = Path(__file__).parent / "data" / "default_api.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """`noodle serve`'s app around the node library, with the shipped models."""
    import nodes  # noqa: F401 - registers the library, the ComfyUI pack among it

    if REGISTRY.get("KSampler") is None or REGISTRY.get("CheckpointLoaderSimple") is None:
        pytest.skip("the ComfyUI node pack is not registered")
    root = tmp_path_factory.mktemp("comfy-clients")
    folders = Folders(output=root / "output", input=root / "input", models=MODELS,
                      user=root / "user", temp_dir=root / "temp")
    thread = ServerThread(create_app(Executor(REGISTRY, folders=folders)))
    thread.start()
    yield thread
    thread.stop()


def default_graph(seed: int) -> dict[str, Any]:
    graph = json.loads(DEFAULT_GRAPH.read_text())
    graph["3"]["inputs"]["seed"] = seed
    return graph


def png_text(data: bytes) -> dict[str, str]:
    assert data[:8] == PNG_SIGNATURE
    with Image.open(io.BytesIO(data)) as img:
        assert img.width == img.height > 0
        return dict(img.text)


# ------------------------------------------------------------------ comfy-api-simplified
def test_comfy_api_simplified_queue_and_wait_images(server: ServerThread,
                                                    tmp_path: Path) -> None:
    api = simplified.ComfyApiWrapper(server.url)
    wf = simplified.ComfyWorkflowWrapper(str(DEFAULT_GRAPH))
    wf.set_node_param("KSampler", "seed", 42)
    images = api.queue_and_wait_images(wf, "Save Image")
    assert len(images) == 1
    (name, data), = images.items()
    assert name.startswith("ComfyUI_") and name.endswith("_.png")
    assert json.loads(png_text(data)["prompt"]) == dict(wf)

    info = api.get_object_info("KSampler")["KSampler"]
    assert "euler" in info["input"]["required"]["sampler_name"][0]
    assert "noodle-tiny" in api.get_object_info("CheckpointLoaderSimple")[
        "CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert api.get_system_stats()["devices"]
    assert isinstance(api.get_embeddings(), list)
    assert set(api.get_queue()) >= {"queue_running", "queue_pending"}
    picture = tmp_path / "in.png"
    Image.new("RGB", (8, 8), "red").save(picture)
    uploaded = api.upload_image(str(picture), subfolder="t")
    assert uploaded == {"name": "in.png", "subfolder": "t", "type": "input"}
    api.interrupt()

    wf.set_node_param("KSampler", "sampler_name", "no_such_sampler")
    with pytest.raises(simplified.ComfyApiError):
        api.queue_prompt(wf)


# ------------------------------------------------------------------ comfy-toolkit
def test_comfy_toolkit_submit_wait_download(server: ServerThread) -> None:
    client = toolkit.ComfyClient(server.url, timeout=10)
    assert client.is_online()
    prompt_id = client.submit(default_graph(seed=7))
    result = client.wait(prompt_id, expect="images", poll_interval=0.2, max_wait=120)
    assert result["status"] == "completed"
    (image,) = result["images"]
    assert image["type"] == "output" and image["node_id"] == "9"
    assert png_text(client.download(image))["prompt"]
    assert client.queue_status() == {"running": 0, "pending": 0}
    client.interrupt()

    bad = default_graph(seed=7)
    bad["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    with pytest.raises(toolkit.ComfySubmitError):
        client.submit(bad)


def test_comfy_toolkit_websocket_tracking(server: ServerThread) -> None:
    client = toolkit.ComfyClient(server.url, timeout=10)
    steps: list[tuple[int, int]] = []
    visited: list[str | None] = []
    result = client.submit_and_track(
        default_graph(seed=11), on_progress=lambda v, m: steps.append((v, m)),
        on_node=visited.append, client_id=uuid.uuid4().hex, expect="images",
        overall_timeout=120, recv_timeout=2, history_retries=1)
    assert result["status"] == "completed" and result["images"]
    assert steps == [(1, 2), (2, 2)]
    # Nodes in run order; the client stops listening at execution_success, whose history
    # entry the single read (`history_retries=1`) must already find.
    assert visited[-2:] == ["8", "9"] and "3" in visited


# ------------------------------------------------------------------ the pack's error shapes
def test_pack_prompt_errors_in_comfyui_shapes(server: ServerThread) -> None:
    bad = default_graph(seed=1)
    bad["3"]["inputs"]["sampler_name"] = "no_such_sampler"
    resp = requests.post(f"{server.url}/prompt", json={"prompt": bad}, timeout=30)
    assert resp.status_code == 400
    body = resp.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    (error,) = body["node_errors"]["3"]["errors"]
    assert error["type"] == "value_not_in_list"
    # ComfyUI lists the choices, or only their count past 20 of them.
    count = len(SAMPLER_NAMES)
    choices = f"(list of length {count})" if count > 20 else "["
    assert error["details"].startswith(f"sampler_name: 'no_such_sampler' not in {choices}")
    assert body["node_errors"]["3"] == {**body["node_errors"]["3"], "class_type": "KSampler",
                                        "dependent_outputs": ["9"]}
    unknown = default_graph(seed=1)
    unknown["10"] = {"class_type": "SomeCustomNode", "inputs": {}}
    body = requests.post(f"{server.url}/prompt", json={"prompt": unknown}, timeout=30).json()
    assert body["error"]["type"] == "invalid_prompt"
    assert body["error"]["details"] == "Node ID '#10'"
