"""`GET /api/model-library`: the models the canvas's browser lists.

The engine knows no model kinds: the node library provides `model_library` (a list of
`{kind, name, source, size, family}`). Without it, the ComfyUI model folders provider's
names are listed with no size or family, and with neither the list is empty. Listing reads
folders, so it runs off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from graph_runtime.executor import Executor


def library(executor: Executor) -> list[dict[str, Any]]:
    """The provider's list, else the folder names with no details."""
    folders = executor.folders
    detailed = executor.registry.provider("model_library")
    if detailed is not None:
        return list(detailed(folders))
    names = executor.registry.provider("model_folders")
    if names is None:
        return []
    return [{"kind": kind, "name": name, "source": name, "size": None, "family": None}
            for kind, listed in names(folders).items() for name in listed]


def library_handler(executor: Executor) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        models = await loop.run_in_executor(None, library, executor)
        return web.json_response({"models": models})

    return handle
