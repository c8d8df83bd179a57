"""Step previews only when someone listens, at most every N steps, never blocking the loop.

The rule (`PreviewPolicy`): a preview is wanted at every N-th step and at the last one,
while a listener is there. Non-final previews are rendered by a background worker that
keeps only the newest request and attaches the image to the next progress event; the last
step's is rendered at once. Progress events stay one per step.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Annotated, Any

import pytest
import torch
from PIL import Image as PILImage

import nodes  # noqa: F401 - registers the node library the shipped workflows use
from graph_runtime import Folders, Int, Registry, current, node
from graph_runtime.cache import OutputCache
from graph_runtime.context import PreviewPolicy, RunContext, activate, deactivate
from graph_runtime.executor import Executor
from graph_runtime.registry import REGISTRY
from graph_runtime.server import create_app
from tests.support.noodle_api import wait_history
from tests.support.paths import MODELS
from tests.support.workflows import shipped, workflow_dict

needs_model = pytest.mark.skipif(not (MODELS / "noodle-tiny").exists(),
                                 reason="the embedded model is not here")
SIZE = 32


def test_policy_rule() -> None:
    """Every 3rd step and the last; nothing without a listener or with every = 0."""
    every_3 = PreviewPolicy(3)
    assert [s for s in range(1, 11) if every_3.wants(s, 10)] == [3, 6, 9, 10]
    assert [s for s in range(1, 5) if PreviewPolicy(1).wants(s, 4)] == [1, 2, 3, 4]
    assert not any(PreviewPolicy(3, lambda: False).wants(s, 10) for s in range(1, 11))
    assert not any(PreviewPolicy(0).wants(s, 10) for s in range(1, 11))
    folders = Folders.from_env()
    assert not RunContext("1", "T", folders, previews=None).wants_preview(10, 10)


# ------------------------------------------------------------------ Denoise, counted
@pytest.fixture(scope="module")
def executor() -> Executor:
    return Executor(REGISTRY, OutputCache())


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Calls of the preview renderer (their `final` flags), each a small image."""
    from nodes import previews

    calls: list[bool] = []

    def render(sample: torch.Tensor, projection: Any = None, pixel_space: bool = False,
               final: bool = False) -> PILImage.Image:
        calls.append(final)
        return PILImage.new("RGB", (8, 8))

    monkeypatch.setattr(previews, "step_preview", render)
    return calls


def _txt2img(executor: Executor, out: Path, steps: int, seed: int,
             previews: PreviewPolicy | None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    wf = shipped("txt2img.json", [f"5.steps={steps}", f"4.seed={seed}", f"4.width={SIZE}",
                                  f"4.height={SIZE}"])
    result = executor.run(wf, output_dir=out, on_event=events.append, previews=previews)
    assert result.ok, result.error
    return [e for e in events if e["type"] == "progress"]


@needs_model
def test_no_listener_no_preview(executor: Executor, renders: list[bool], tmp_path: Path
                                ) -> None:
    """An executor used from Python makes no previews unless asked; progress still comes."""
    assert executor.previews is None
    progress = _txt2img(executor, tmp_path, 4, 31, None)
    assert [e["step"] for e in progress] == [1, 2, 3, 4]
    assert all(e["preview"] is None for e in progress)
    assert renders == []


@needs_model
def test_every_third_step_and_the_last(executor: Executor, renders: list[bool],
                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import nodes.sampling

    asked: list[bool] = []
    deferred = nodes.sampling.deferred_preview

    def counted(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs["final"])
        return deferred(*args, **kwargs)

    monkeypatch.setattr(nodes.sampling, "deferred_preview", counted)
    progress = _txt2img(executor, tmp_path, 10, 32, PreviewPolicy(3))
    assert [e["step"] for e in progress] == list(range(1, 11))
    assert asked == [False, False, False, True]  # steps 3, 6, 9 and 10
    shown = [e["step"] for e in progress if e["preview"] is not None]
    # A background render rides on a later event; the last step's is made at once.
    assert shown[-1] == 10 and all(step >= 3 for step in shown)
    assert True in renders and len(renders) <= 4


@pytest.fixture(scope="module")
def denoise_inputs() -> dict[str, Any]:
    from nodes.latents import random_latents
    from nodes.loaders import load_pipeline
    from nodes.text import text_to_conditioning

    pipe = load_pipeline("noodle-tiny")
    return {"pipe": pipe,
            "positive": text_to_conditioning(pipe.tokenizer, pipe.text_encoder, "a circle"),
            "latents": random_latents(pipe.unet, pipe.vae, SIZE, SIZE, 1, 5)}


@needs_model
def test_a_slow_preview_never_holds_the_loop(denoise_inputs: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-final previews block until the run is over: the loop still finishes all six
    steps, the requests it made meanwhile were dropped for newer ones, and only the last
    step's preview (made at once) was shown."""
    from nodes import previews
    from nodes.sampling import denoise

    release = threading.Event()
    started: list[bool] = []
    finished: list[bool] = []

    def slow(sample: torch.Tensor, projection: Any = None, pixel_space: bool = False,
             final: bool = False) -> PILImage.Image:
        started.append(final)
        if not final:
            release.wait(30)
        finished.append(final)
        return PILImage.new("RGB", (8, 8))

    monkeypatch.setattr(previews, "step_preview", slow)
    events: list[dict[str, Any]] = []
    ctx = RunContext("5", "Denoise", Folders.from_env(), emit=lambda kind, data:
                     events.append(data), previews=PreviewPolicy(1))
    token = activate(ctx)
    try:
        inputs, pipe = denoise_inputs, denoise_inputs["pipe"]
        denoise(pipe.unet, pipe.scheduler, inputs["positive"], inputs["latents"], steps=6)
    finally:
        deactivate(token)
    try:
        assert [e["step"] for e in events] == [1, 2, 3, 4, 5, 6]
        assert finished == [True]  # no background preview finished before the run ended
        worker = ctx.preview_worker
        in_flight = started.count(False)
        assert in_flight <= 1 and in_flight + worker.dropped == 5
        assert [e["preview"] is not None for e in events] == [False] * 5 + [True]
    finally:
        release.set()


# ------------------------------------------------------------------ the server setting
WANTED: list[int] = []


def watched(steps: Annotated[int, Int(min=1, max=50)] = 10) -> None:
    """Steps that make a (cheap) preview only when one is wanted."""
    ctx = current()
    assert ctx is not None
    for step in range(1, steps + 1):
        preview = None
        if ctx.wants_preview(step, steps):
            WANTED.append(step)
            preview = lambda: PILImage.new("RGB", (8, 8), "red")  # noqa: E731
        ctx.progress(step, steps, preview)


@pytest.fixture
def server_app(tmp_path: Path) -> Any:
    registry = Registry()
    node("Watched", registry=registry, output_node=True)(watched)
    folders = Folders(output=tmp_path / "output", input=tmp_path / "input",
                      models=tmp_path / "models", user=tmp_path / "user",
                      temp_dir=tmp_path / "temp")
    WANTED.clear()
    return create_app(Executor(registry, folders=folders), workflows_dir=tmp_path,
                      state_db=":memory:", preview_every=3)


async def _run(client: Any, client_id: str | None, steps: int) -> str:
    """Run Watched (a step count of its own per run: nothing comes from the cache)."""
    body: dict[str, Any] = {"workflow": workflow_dict({"1": ("Watched", {"steps": steps})})}
    if client_id is not None:
        body["client_id"] = client_id
    pid = (await (await client.post("/api/prompt", json=body)).json())["prompt_id"]
    await wait_history(client, pid)
    return pid


@pytest.mark.asyncio
async def test_server_previews_follow_listeners_and_the_setting(aiohttp_client: Any,
                                                                server_app: Any) -> None:
    client = await aiohttp_client(server_app)
    await _run(client, None, 8)
    assert WANTED == []  # nobody connected: no preview made
    comfy = await client.ws_connect("/ws?clientId=c1")  # ComfyUI's sockets get none
    await comfy.receive_json(timeout=5)
    await _run(client, "c1", 9)
    assert WANTED == []
    await comfy.close()

    ws = await client.ws_connect("/ws?client_id=abc")
    await ws.receive_json(timeout=5)
    pid = await _run(client, "abc", 10)
    assert WANTED == [3, 6, 9, 10]
    progress = []
    while True:
        msg = await ws.receive_json(timeout=10)
        if msg["type"] == "progress":
            progress.append(msg["data"])
        if msg["type"] == "finished" and msg["data"]["prompt_id"] == pid:
            break
    assert [p["step"] for p in progress] == list(range(1, 11))
    assert progress[-1]["preview"].startswith("data:image/jpeg;base64,")
    assert all(p["preview"] is None for p in progress[:2])
    await ws.close()
    await asyncio.sleep(0)
