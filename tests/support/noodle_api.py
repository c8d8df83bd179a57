"""Client-side helpers for tests of our own HTTP API (ComfyUI's are in `comfy_api`)."""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_history(client: Any, prompt_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """Poll `GET /api/history/{id}` until the prompt has finished; its history entry."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        resp = await client.get(f"/api/history/{prompt_id}")
        if resp.status == 200:
            return await resp.json()
        await asyncio.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} did not finish")
