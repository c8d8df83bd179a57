"""What the ComfyUI API tests share: an app over the toy nodes plus two nodes in a "ComfyUI"
category (so `/object_info` has something to list), providers for the model routes, API
format prompts for the toy graph, and waiting for a history entry.

The toy graph runs through ComfyUI's routes exactly as a pack graph would: the prompt is
converted by the registered ComfyUI importer (imported here), validated and queued.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from aiohttp import web

import nodes.comfyui.importer  # noqa: F401 - registers the API-format importer
from graph_runtime import Choice, Float, Folders, Int, Registry, Seed, Text, node
from graph_runtime.executor import Executor
from graph_runtime.server import create_app
from tests.support.toy_nodes import CANVAS, Picture, toy_registry

SAMPLERS = ["euler", "heun", "ddim"]
MODEL_LISTS = {"checkpoints": ["a.safetensors", "sub/b.safetensors"], "loras": []}


def comfy_registry(providers: bool = True) -> Registry:
    """The canvas toy nodes, `ToySampler` and `ToyLoadImage` (category "ComfyUI/...")."""
    reg = toy_registry(CANVAS)

    @node("ToySampler", category="ComfyUI/sampling", output="VALUE", display_name="Toy Sampler",
          registry=reg)
    def toy_sampler(value: int,
                    seed: Annotated[int, Seed(max=2**64 - 1)] = 0,
                    steps: Annotated[int, Int(min=1, max=10000)] = 20,
                    cfg: Annotated[float, Float(min=0.0, max=100.0, step=0.1)] = 8.0,
                    sampler_name: Annotated[str, Choice(SAMPLERS, tooltip="how")] = "euler",
                    text: Annotated[str, Text(multiline=True)] = "",
                    extra: Picture | None = None) -> int:
        """Adds the steps."""
        return value + steps

    @node("ToyLoadImage", category="ComfyUI/image", output="IMAGE", registry=reg)
    def toy_load(image: Annotated[str, Choice(lambda f: sorted(p.name for p in f.input.iterdir()),
                                              upload="image")] = "") -> Picture:
        """Loads."""
        raise RuntimeError("not used")

    if providers:
        reg.provide("model_folders", lambda folders: dict(MODEL_LISTS))
        reg.provide("embeddings", lambda folders: ["emb_one"])
    return reg


def comfy_folders(root: Path) -> Folders:
    names = ("output", "input", "temp", "user", "models")
    for name in names:
        (root / name).mkdir(exist_ok=True)
    return Folders(output=root / "output", input=root / "input", models=root / "models",
                   user=root / "user", temp_dir=root / "temp")


def comfy_app(root: Path, registry: Registry | None = None) -> web.Application:
    executor = Executor(registry or comfy_registry(), folders=comfy_folders(root))
    return create_app(executor, max_upload_bytes=2**20)


def gradient_prompt(steps: int = 2, seed: int = 0, delay: float = 0.0, colour: str = "red",
                    prefix: str = "cf") -> dict[str, Any]:
    """Gradient -> SavePicture in ComfyUI's API format, with `_meta` titles."""
    return {
        "1": {"class_type": "Gradient", "_meta": {"title": "Gradient"},
              "inputs": {"size": 16, "seed": seed, "steps": steps, "delay": delay,
                         "colour": colour, "label": "hi"}},
        "2": {"class_type": "SavePicture", "_meta": {"title": "Save Image"},
              "inputs": {"image": ["1", 0], "filename_prefix": prefix}},
    }


async def wait_history(client: Any, prompt_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """ComfyUI's history entry of `prompt_id` once it is there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        data = await (await client.get(f"/history/{prompt_id}")).json()
        if data:
            return data[prompt_id]
        await asyncio.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish")


async def wait_running(client: Any, timeout: float = 10.0) -> list[Any]:
    """The running 5-tuple once the worker has taken a prompt."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        queue = await (await client.get("/queue")).json()
        if queue["queue_running"]:
            return queue["queue_running"][0]
        await asyncio.sleep(0.02)
    raise AssertionError("nothing started running")
