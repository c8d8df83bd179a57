"""Saved workflows: the user's folder (read/write) and the shipped folder (read-only).

Names are plain file stems (letters, digits, space, `_`, `-`, `.`; no path), so a name can
never reach outside its folder. A user workflow with the name of a shipped one shadows it
for `GET /api/workflows/{name}`; `?source=shipped` always reads the shipped file. A v1
document is answered as loaded, with the node library's upgrades applied. Writes go
through a temporary file and a rename, so a crash never leaves half a workflow behind.
Saved documents must be well-formed v1 workflows (shape only: a workflow that does not
validate yet is still worth saving).

`POST /api/workflows/import` takes a file as it is (JSON in any importable format, or a
PNG carrying a workflow) and answers the v1 workflow, so the canvas opens other tools'
files through the same importers as `noodle import`, without a converter of its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from graph_runtime.registry import Registry
from graph_runtime.server.responses import error_response
from graph_runtime.server.security import Handler
from graph_runtime.workflow import WorkflowFormatError, from_dict, import_workflow

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}$")
MAX_WORKFLOW_BYTES = 8 * 2**20
MAX_IMPORT_BYTES = 64 * 2**20  # a PNG carrying a workflow may be a large picture


def clean_name(raw: str) -> str | None:
    """The stem for a requested name (`x` or `x.json`), or None if it is not acceptable."""
    name = raw[:-5] if raw.lower().endswith(".json") else raw
    if not NAME_RE.match(name) or ".." in name or name.endswith((".", " ")):
        return None
    return name


def _describe(path: Path, source: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": path.stem, "source": source, "description": ""}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            entry["description"] = str(data.get("description", ""))[:500]
            entry["title"] = str(data.get("name", "") or path.stem)[:200]
    except (OSError, ValueError):
        entry["broken"] = True
    return entry


def _opened(data: Any) -> Any:
    """A saved document as a reader should see it: a v1 workflow passes through the node
    library's registered upgrades (as `noodle run` loads it), so the canvas never opens a
    file saved by an older library with node types or input names that no longer exist.
    Anything that is not a well-formed v1 document comes back as written."""
    try:
        return from_dict(data).to_dict()
    except WorkflowFormatError:
        return data


class WorkflowStore:
    """Route handlers over the two folders."""

    def __init__(self, user_dir: Path, shipped_dir: Path | None) -> None:
        self.user_dir = Path(user_dir)
        self.shipped_dir = Path(shipped_dir) if shipped_dir is not None else None

    def _files(self, folder: Path | None) -> list[Path]:
        if folder is None or not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.json")
                      if p.is_file() and clean_name(p.name) is not None)

    async def list(self, request: web.Request) -> web.Response:
        items = [_describe(p, "user") for p in self._files(self.user_dir)]
        items += [_describe(p, "shipped") for p in self._files(self.shipped_dir)]
        return web.json_response({"workflows": items})

    async def get(self, request: web.Request) -> web.StreamResponse:
        name = clean_name(request.match_info["name"])
        if name is None:
            return error_response(400, "invalid_name", "invalid workflow name")
        source = request.query.get("source")
        candidates: list[Path] = []
        if source in (None, "user"):
            candidates.append(self.user_dir / f"{name}.json")
        if source in (None, "shipped") and self.shipped_dir is not None:
            candidates.append(self.shipped_dir / f"{name}.json")
        for path in candidates:
            if path.is_file() and not path.is_symlink():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    return error_response(500, "unreadable", f"{name}: {exc}")
                return web.json_response(_opened(data))
        return error_response(404, "not_found", f"no workflow named {name!r}")

    async def put(self, request: web.Request) -> web.Response:
        name = clean_name(request.match_info["name"])
        if name is None:
            return error_response(400, "invalid_name", "invalid workflow name (letters, digits, "
                          "space, '_', '-', '.'; at most 100 characters)")
        if request.content_length is not None and request.content_length > MAX_WORKFLOW_BYTES:
            return error_response(413, "too_large", "workflow too large")
        try:
            data = await request.json()
        except ValueError as exc:
            return error_response(400, "invalid_json", f"not valid JSON: {exc}")
        try:
            from_dict(data)
        except WorkflowFormatError as exc:
            return error_response(400, "invalid_format", str(exc))
        self.user_dir.mkdir(parents=True, exist_ok=True)
        target = self.user_dir / f"{name}.json"
        tmp = self.user_dir / f".{name}.json.part"
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(target)
        return web.json_response({"name": name, "source": "user"})

    async def delete(self, request: web.Request) -> web.Response:
        name = clean_name(request.match_info["name"])
        if name is None:
            return error_response(400, "invalid_name", "invalid workflow name")
        target = self.user_dir / f"{name}.json"
        if target.is_file():
            target.unlink()
            return web.json_response({"deleted": name})
        if self.shipped_dir is not None and (self.shipped_dir / f"{name}.json").is_file():
            return error_response(403, "read_only", "shipped workflows are read-only")
        return error_response(404, "not_found", f"no workflow named {name!r}")


def import_handler(registry: Registry) -> Handler:
    """`POST /api/workflows/import`: the request body is the file itself; the answer is
    `{"workflow": v1, "format": name}`, or 400 saying why the file cannot be read."""

    async def handle(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_IMPORT_BYTES:
            return error_response(413, "too_large", "file too large to import")
        body = await request.read()
        if not body:
            return error_response(400, "invalid_request", "send the file as the request body")
        try:
            wf, kind = import_workflow(body, registry)
        except WorkflowFormatError as exc:
            return error_response(400, "invalid_format", str(exc))
        return web.json_response({"workflow": wf.to_dict(), "format": kind})

    return handle
