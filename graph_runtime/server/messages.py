"""Our websocket messages, made from the executor's events (see docs/http-api.md).

The executor's events are nearly the messages already; the differences are the names
(`run_started` is `started`, `run_finished` is `finished`), output files as `/api/view`
refs, and step previews as small JPEG data URLs a browser shows without a frame parser.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

Message = dict[str, Any]
FileRefs = Callable[[list[str]], list[dict[str, str]]]
PREVIEW_MAX_SIDE = 256


def encode_preview(image: Any) -> str | None:
    """A PIL image as a small JPEG data URL, or None for anything else."""
    if image is None or not hasattr(image, "save") or not hasattr(image, "size"):
        return None
    try:
        img = image.convert("RGB")
        if max(img.size) > PREVIEW_MAX_SIDE:
            img = img.copy()
            img.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def translate(event: dict[str, Any], prompt_id: str, file_refs: FileRefs) -> Message | None:
    """An executor event as the websocket message the canvas reads (None: not sent)."""
    kind = event["type"]
    data = {k: v for k, v in event.items() if k not in ("type", "run_id")}
    data["prompt_id"] = prompt_id
    if kind == "queued":
        return None  # announced by `put` already, with the queue number
    if kind == "run_started":
        return {"type": "started", "data": data}
    if kind == "progress":
        data["preview"] = encode_preview(event.get("preview"))
        return {"type": "progress", "data": data}
    if kind == "run_finished":
        data["files"] = file_refs(event.get("files", []))
        return {"type": "finished", "data": data}
    return {"type": kind, "data": data}


def finished_message(prompt_id: str, ok: bool = False) -> Message:
    """`finished` for a prompt that did not run (or whose run sent none)."""
    return {"type": "finished", "data": {
        "prompt_id": prompt_id, "ok": ok, "executed": [], "cached": [], "files": [],
        "seconds": 0.0, "interrupted": False}}
