"""The aiohttp application: the canvas page, the REST API and the websocket.

Routes (all JSON unless said otherwise; errors are `{"errors": [{node, input, code,
message}]}` with a 4xx status, the same shape validation uses):

    GET    /                       the canvas (web/index.html; static files under /js /css /lib)
    GET    /api/nodes              every node's schema, by type name
    GET    /api/models             {"models": [...]}: what LoadPipeline can load by name
    POST   /api/prompt             {workflow, client_id} -> {prompt_id, number} | 400 {errors}
    GET    /api/queue              {running: [...], pending: [...]}
    DELETE /api/queue/{id}         drop a pending prompt, or interrupt it if it is running
    POST   /api/interrupt          interrupt the running prompt
    GET    /api/history            [entry, ...] oldest first;  GET /api/history/{id}: one entry
    GET    /api/view               ?filename=&type=output|input|temp&subfolder=
    POST   /api/upload/image       multipart field "image" -> {name, subfolder, type: "input"}
    GET    /api/workflows          {"workflows": [{name, source: user|shipped, description}]}
    GET    /api/workflows/{name}   PUT (save to the user folder), DELETE (user folder only)
    GET    /ws?client_id=          events, see `hub` and `prompt_queue`

The node library is never imported here: the registry arrives already filled, and the
model list is read from the registry's `LoadPipeline.source` choice (or the models folder).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from graph_runtime.executor import Executor
from graph_runtime.graph import validate
from graph_runtime.nodes import Registry
from graph_runtime.server.files import MAX_UPLOAD_BYTES, upload_handler, view_handler
from graph_runtime.server.hub import Hub
from graph_runtime.server.prompt_queue import PromptQueue
from graph_runtime.server.security import is_loopback_bind, security_middleware
from graph_runtime.server.workflows import WorkflowStore
from graph_runtime.workflow import WorkflowFormatError, from_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = REPO_ROOT / "web"
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


HUB_KEY = web.AppKey("hub", Hub)
QUEUE_KEY = web.AppKey("queue", PromptQueue)


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"errors": [{"node": None, "input": None, "code": code,
                                          "message": message}], **extra}, status=status)


def models_from_registry(registry: Registry, models_dir: Path | None
                         ) -> Callable[[], list[str]]:
    """What `/api/models` lists: the options of `LoadPipeline`'s `source` choice when the
    node library offers them, else the model folders and checkpoint files in `models_dir`."""

    def lister() -> list[str]:
        definition = registry.get("LoadPipeline")
        spec = definition.inputs.get("source") if definition is not None else None
        options = getattr(spec.widget, "current_options", None) if spec is not None else None
        if callable(options):
            return list(options())
        if models_dir is None or not models_dir.is_dir():
            return []
        names = []
        for p in sorted(models_dir.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir() or p.suffix.lower() in MODEL_SUFFIXES:
                names.append(p.name)
        return names

    return lister


def create_app(registry: Registry, executor: Executor, *, output_dir: Path | str,
               input_dir: Path | str, temp_dir: Path | str, user_dir: Path | str,
               workflows_dir: Path | str | None, models_dir: Path | str | None,
               models_lister: Callable[[], list[str]] | None = None,
               bind_host: str = "127.0.0.1", web_dir: Path | str = WEB_DIR,
               max_upload_bytes: int = MAX_UPLOAD_BYTES) -> web.Application:
    """Build the application. `bind_host` decides the DNS-rebinding guard: on a loopback
    address only loopback `Host` headers are answered."""
    output_dir, input_dir, temp_dir = Path(output_dir), Path(input_dir), Path(temp_dir)
    web_dir = Path(web_dir)
    for folder in (output_dir, input_dir, temp_dir):
        folder.mkdir(parents=True, exist_ok=True)
    app = web.Application(middlewares=[security_middleware(is_loopback_bind(bind_host))],
                          client_max_size=max_upload_bytes + 2**20)
    hub = Hub()
    queue = PromptQueue(executor, output_dir, hub.publish_threadsafe)
    hub.greeting = queue.status
    app[HUB_KEY] = hub
    app[QUEUE_KEY] = queue
    list_models = models_lister or models_from_registry(
        registry, Path(models_dir) if models_dir is not None else None)
    store = WorkflowStore(Path(user_dir) / "workflows",
                          Path(workflows_dir) if workflows_dir is not None else None)

    async def index(request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(web_dir / "index.html")
        response.content_type = "text/html"
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def nodes(request: web.Request) -> web.Response:
        return web.json_response(registry.schemas())

    async def models(request: web.Request) -> web.Response:
        names = await asyncio.get_running_loop().run_in_executor(None, list_models)
        return web.json_response({"models": names})

    async def prompt(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError as exc:
            return _error(400, "invalid_json", f"the request body is not JSON: {exc}")
        if not isinstance(body, dict) or "workflow" not in body:
            return _error(400, "invalid_request", "expected {\"workflow\": ..., "
                          "\"client_id\": ...}")
        client_id = body.get("client_id")
        if client_id is not None and not isinstance(client_id, str):
            return _error(400, "invalid_request", "client_id must be a string")
        try:
            wf = from_dict(body["workflow"])
        except WorkflowFormatError as exc:
            return web.json_response({"errors": [{"node": None, "input": None,
                                                  "code": "invalid_format",
                                                  "message": str(exc)}]}, status=400)
        errors = validate(wf, registry)
        if errors:
            return web.json_response({"errors": errors}, status=400)
        item = queue.put(wf.copy(), client_id or None)
        return web.json_response({"prompt_id": item.prompt_id, "number": item.number})

    async def get_queue(request: web.Request) -> web.Response:
        return web.json_response(queue.snapshot())

    async def delete_queue(request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        outcome = queue.delete(pid)
        if outcome is None:
            return _error(404, "not_found", f"no queued prompt {pid!r}")
        return web.json_response({"prompt_id": pid, "result": outcome})

    async def interrupt(request: web.Request) -> web.Response:
        return web.json_response({"interrupted": queue.interrupt()})

    async def history(request: web.Request) -> web.Response:
        return web.json_response(queue.history(), dumps=_dumps)

    async def history_one(request: web.Request) -> web.Response:
        entry = queue.history_entry(request.match_info["prompt_id"])
        if entry is None:
            return _error(404, "not_found", "no such prompt in the history")
        return web.json_response(entry, dumps=_dumps)

    async def on_startup(app: web.Application) -> None:
        hub.bind(asyncio.get_running_loop())
        queue.start()

    async def on_shutdown(app: web.Application) -> None:
        await hub.close_all()

    async def on_cleanup(app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, queue.stop)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)

    r = app.router
    r.add_get("/", index)
    r.add_get("/api/nodes", nodes)
    r.add_get("/api/models", models)
    r.add_post("/api/prompt", prompt)
    r.add_get("/api/queue", get_queue)
    r.add_delete("/api/queue/{prompt_id}", delete_queue)
    r.add_post("/api/interrupt", interrupt)
    r.add_get("/api/history", history)
    r.add_get("/api/history/{prompt_id}", history_one)
    r.add_get("/api/view", view_handler({"output": output_dir, "input": input_dir,
                                         "temp": temp_dir}))
    r.add_post("/api/upload/image", upload_handler(input_dir, max_upload_bytes))
    r.add_get("/api/workflows", store.list)
    r.add_get("/api/workflows/{name}", store.get)
    r.add_put("/api/workflows/{name}", store.put)
    r.add_delete("/api/workflows/{name}", store.delete)
    r.add_get("/ws", hub.handle)
    for sub in ("js", "css", "lib"):
        if (web_dir / sub).is_dir():
            r.add_static(f"/{sub}/", web_dir / sub, append_version=False)
    return app
