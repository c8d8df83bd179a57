"""The aiohttp application: the canvas page, the REST API and the websocket.

Routes (all JSON unless said otherwise; errors are `{"errors": [{node, input, code,
message}]}` with a 4xx status, the same shape validation uses):

    GET    /                       the canvas (web/index.html; static files under /js /css /lib)
    GET    /api/nodes              every node's schema, by type name
    GET    /api/types              every socket type: colour and the types it accepts
    POST   /api/prompt             {workflow, client_id} -> {prompt_id, number} | 400 {errors}
    GET    /api/queue              {running: [...], pending: [...]}
    DELETE /api/queue              drop every pending prompt (the running one runs on)
    DELETE /api/queue/{id}         drop a pending prompt, or interrupt it if it is running
    POST   /api/interrupt          interrupt the running prompt
    GET    /api/history            ?limit=&offset= a page of [entry, ...] oldest first (default:
                                   the newest 100);  GET /api/history/{id}: one entry
    GET    /api/view               ?filename=&type=output|input|temp&subfolder=
    POST   /api/upload/image       multipart field "image" -> {name, subfolder, type: "input"}
    GET    /api/workflows          {"workflows": [{name, source: user|shipped, description}]}
    GET    /api/workflows/{name}   PUT (save to the user folder), DELETE (user folder only)
    POST   /api/workflows/import   body: a file in any importable format -> {workflow, format}
    GET    /api/model-library      {"models": [{kind, name, source, size, family}]}, see `models`
    GET    /ws?client_id=          events, see `hub` and `prompt_queue`
    GET    /login, POST /login, POST /logout   only with an access token, see `auth`

ComfyUI's API is served beside ours, at its bare paths and under `/api/` (see `comfy`);
where a path is in both, one handler tells the two apart by the request.

The node library is never imported here: the executor arrives with its registry filled,
and with the folders every route and every run uses.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from graph_runtime.context import PreviewPolicy
from graph_runtime.executor import Executor
from graph_runtime.graph import validate
from graph_runtime.server import auth
from graph_runtime.server.backend import Backend
from graph_runtime.server.comfy.routes import ComfyApi, Handler, Route
from graph_runtime.server.files import MAX_UPLOAD_BYTES, upload_handler, view_handler
from graph_runtime.server.history import our_history, our_history_one
from graph_runtime.server.hub import Hub, InvalidClientId, check_client_id
from graph_runtime.server.limits import body_limits_middleware
from graph_runtime.server.models import library_handler
from graph_runtime.server.prompt_queue import PromptQueue
from graph_runtime.server.responses import error_response, errors_response
from graph_runtime.server.security import is_loopback_bind, security_middleware
from graph_runtime.server.workflows import WorkflowStore, import_handler
from graph_runtime.workflow import WorkflowFormatError, from_dict

# Step previews every this many steps (and the last), as ComfyUI shows them: every step.
PREVIEW_EVERY = 1
REPO_ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = REPO_ROOT / "web"
HUB_KEY = web.AppKey("hub", Hub)
QUEUE_KEY = web.AppKey("queue", PromptQueue)


class Api:
    """The REST handlers over one executor, its prompt queue and its websocket hub."""

    def __init__(self, executor: Executor, queue: PromptQueue, hub: Hub, web_dir: Path) -> None:
        self.executor, self.queue, self.hub, self.web_dir = executor, queue, hub, web_dir
        self.registry = executor.registry

    async def index(self, request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(self.web_dir / "index.html")
        response.content_type = "text/html"
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def nodes(self, request: web.Request) -> web.Response:
        # Choices listed from folders read the disk: off the event loop.
        schemas = await asyncio.get_running_loop().run_in_executor(
            None, self.registry.schemas, self.executor.folders)
        return web.json_response(schemas)

    async def types(self, request: web.Request) -> web.Response:
        return web.json_response(self.registry.type_schemas())

    async def prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError as exc:
            return error_response(400, "invalid_json", f"the request body is not JSON: {exc}")
        if not isinstance(body, dict) or "workflow" not in body:
            return error_response(400, "invalid_request",
                                  "expected {\"workflow\": ..., \"client_id\": ...}")
        try:
            client_id = check_client_id(body.get("client_id"))
        except InvalidClientId as exc:
            return error_response(400, "invalid_client_id", str(exc))
        try:
            wf = from_dict(body["workflow"])
        except WorkflowFormatError as exc:
            return error_response(400, "invalid_format", str(exc))
        errors = validate(wf, self.registry, folders=self.executor.folders)
        if errors:
            return errors_response(errors)
        item = self.queue.put(wf.copy(), client_id)
        return web.json_response({"prompt_id": item.prompt_id, "number": item.number})

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue.snapshot())

    async def delete_queue(self, request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        outcome = self.queue.delete(pid)
        if outcome is None:
            return error_response(404, "not_found", f"no queued prompt {pid!r}")
        return web.json_response({"prompt_id": pid, "result": outcome})

    async def clear_queue(self, request: web.Request) -> web.Response:
        """Drop the pending prompts only: deleting them one by one could stop one that
        started meanwhile. Answers with how many were dropped."""
        return web.json_response({"removed": self.queue.remove_pending(None)})

    async def interrupt(self, request: web.Request) -> web.Response:
        """Interrupt the running prompt; `{"prompt_id": ...}` (ComfyUI's form) only if it is
        that one. Answers with the id interrupted (null: none)."""
        target = None
        if await request.read():
            try:
                body = await request.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("prompt_id") is not None:
                target = str(body["prompt_id"])
        return web.json_response({"interrupted": self.queue.interrupt(target)})

    async def history(self, request: web.Request) -> web.StreamResponse:
        return await our_history(request, self.queue)

    async def history_one(self, request: web.Request) -> web.Response:
        return await our_history_one(request, self.queue)

    # ------------------------------------------------------------------ lifecycle
    async def on_startup(self, app: web.Application) -> None:
        self.hub.bind(asyncio.get_running_loop())
        self.queue.start()

    async def on_shutdown(self, app: web.Application) -> None:
        await self.hub.close_all()

    async def on_cleanup(self, app: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.queue.stop)

    def routes(self) -> dict[Route, Handler]:
        return {
            ("GET", "/"): self.index, ("GET", "/api/nodes"): self.nodes,
            ("GET", "/api/types"): self.types, ("POST", "/api/prompt"): self.prompt,
            ("GET", "/api/queue"): self.get_queue, ("DELETE", "/api/queue"): self.clear_queue,
            ("DELETE", "/api/queue/{prompt_id}"): self.delete_queue,
            ("POST", "/api/interrupt"): self.interrupt, ("GET", "/api/history"): self.history,
            ("GET", "/api/history/{prompt_id}"): self.history_one,
            ("GET", "/ws"): self.hub.handle,
        }

    def install(self, app: web.Application, routes: dict[Route, Handler]) -> None:
        """Add `routes` (ours, some replaced by handlers shared with another API)."""
        app.on_startup.append(self.on_startup)
        app.on_shutdown.append(self.on_shutdown)
        app.on_cleanup.append(self.on_cleanup)
        r = app.router
        for (method, path), handler in routes.items():
            r.add_route(method, path, handler)
        for sub in ("js", "css", "lib"):
            if (self.web_dir / sub).is_dir():
                r.add_static(f"/{sub}/", self.web_dir / sub, append_version=False)


def create_app(executor: Executor, *, workflows_dir: Path | str | None = None,
               bind_host: str = "127.0.0.1", web_dir: Path | str = WEB_DIR,
               max_upload_bytes: int = MAX_UPLOAD_BYTES,
               auth_token: str | None = None, state_db: Path | str | None = None,
               requeue_interrupted: bool = False,
               backend: Backend | None = None,
               preview_every: int = PREVIEW_EVERY) -> web.Application:
    """Build the application around `executor`, whose folders it serves and fills.
    `bind_host` decides the DNS-rebinding guard: on a loopback address only loopback
    `Host` headers are answered. `workflows_dir` holds the shipped, read-only workflows.
    `auth_token`: every request must carry it (see `auth`). `state_db`: the SQLite file
    that keeps the queue and history across restarts (default `queue.sqlite3` in the user
    folder; ":memory:" keeps nothing); `requeue_interrupted` runs again a prompt that was
    running when the server stopped, instead of recording it as interrupted. `backend`:
    where prompts run (default: this executor, one at a time; see `backend`).
    `preview_every`: step previews every N steps and the last, made only while a canvas
    socket is open (0: never)."""
    # Workflows come from anyone who can reach the server: nodes read only its folders.
    executor.folders = folders = executor.folders.confined()
    for folder in (folders.output, folders.input, folders.temp):
        folder.mkdir(parents=True, exist_ok=True)
    app = web.Application(middlewares=[security_middleware(is_loopback_bind(bind_host))],
                          client_max_size=max_upload_bytes + 2**20)
    if auth_token is not None:
        auth.install(app, auth_token)
    app.middlewares.append(body_limits_middleware())  # after the guards: see `limits`
    hub = Hub()
    executor.previews = PreviewPolicy(preview_every, hub.listening)
    queue = PromptQueue(executor, hub.publish_threadsafe,
                        state_db=state_db if state_db is not None
                        else folders.user / "queue.sqlite3",
                        requeue_interrupted=requeue_interrupted, backend=backend)
    hub.greeting = queue.status
    app[HUB_KEY] = hub
    app[QUEUE_KEY] = queue
    served = {"output": folders.output, "input": folders.input, "temp": folders.temp}
    view = view_handler(served)
    api = Api(executor, queue, hub, Path(web_dir))
    comfy = ComfyApi(executor, queue, hub, served, view, max_upload_bytes)
    ours = api.routes()
    ours[("GET", "/api/view")] = view
    ours[("POST", "/api/upload/image")] = upload_handler(folders.input, max_upload_bytes)
    ours.update(comfy.shared(ours))
    api.install(app, ours)
    comfy.install(app, taken=set(ours))
    store = WorkflowStore(folders.user / "workflows",
                          Path(workflows_dir) if workflows_dir is not None else None)
    r = app.router
    r.add_get("/api/workflows", store.list)
    r.add_get("/api/workflows/{name}", store.get)
    r.add_put("/api/workflows/{name}", store.put)
    r.add_delete("/api/workflows/{name}", store.delete)
    r.add_post("/api/workflows/import", import_handler(executor.registry))
    r.add_get("/api/model-library", library_handler(executor))
    return app
