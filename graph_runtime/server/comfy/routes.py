"""ComfyUI's HTTP routes over our queue, history and folders.

Every route is served at its bare path (what ComfyUI's Python clients call) and under
`/api/` (what its web front end calls). Where `/api/...` is also one of our own routes, one
handler serves both, telling them apart by the request (see `shared` and docs/http-api.md):
POST /api/prompt by body (`{"prompt": ...}` is ComfyUI's, `{"workflow": ...}` ours);
GET /api/queue answers with both shapes at once; GET /api/history is ComfyUI's when paged
(`max_items`/`offset`, which its front end always sends) and ours otherwise;
GET /api/history/{id} follows the route the prompt came in by.

Model lists and embeddings are the node library's knowledge: they come from the
registry's "model_folders" and "embeddings" providers, so the engine stays generic.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from graph_runtime.executor import Executor
from graph_runtime.node_call import release_device_memory
from graph_runtime.server.comfy import shapes
from graph_runtime.server.comfy.events import DIALECT, ComfyEvents
from graph_runtime.server.comfy.object_info import object_info
from graph_runtime.server.comfy.system import features, system_stats
from graph_runtime.server.comfy.uploads import upload_handler
from graph_runtime.server.comfy.validation import PromptRejected, check_prompt, reason
from graph_runtime.server.hub import MAX_CLIENT_ID, Hub
from graph_runtime.server.prompt_queue import DuplicatePrompt, PromptQueue
from graph_runtime.server.responses import dumps

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str]  # (method, path)


def rejected(error: dict[str, Any], node_errors: dict[str, Any] | None = None,
             status: int = 400) -> web.Response:
    return web.json_response({"error": error, "node_errors": node_errors or {}}, status=status)


async def _json_or_none(request: web.Request) -> Any:
    """The body as JSON; None when it is empty or not JSON (ComfyUI then does the default)."""
    if not await request.read():
        return None
    try:
        return await request.json()
    except ValueError:
        return None


def _ids(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


class ComfyApi:
    """The handlers, over the executor, queue and hub our own API uses."""

    def __init__(self, executor: Executor, queue: PromptQueue, hub: Hub,
                 folders: Mapping[str, Path], view: Handler, max_upload_bytes: int) -> None:
        self.executor, self.queue, self.hub = executor, queue, hub
        self.registry = executor.registry
        self.view = view
        self.upload = upload_handler(dict(folders), max_upload_bytes)
        self.features = features(max_upload_bytes)
        self.events = ComfyEvents(queue, self._send, self.features)
        queue.listeners.append(self.events)
        hub.add_dialect(self.events.dialect())

    def _send(self, message: dict[str, Any], client_id: str | None) -> None:
        self.hub.publish_threadsafe(message, client_id, DIALECT)

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on a worker thread: these read folders or convert whole graphs."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # ------------------------------------------------------------------ prompts
    async def post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError as exc:
            return rejected(reason("invalid_prompt", "The request body is not JSON", str(exc)))
        return await self.submit(body)

    async def submit(self, body: Any) -> web.Response:
        """Validate and queue `{"prompt": ..., "client_id"?, "extra_data"?, "number"?,
        "front"?, "prompt_id"?, "partial_execution_targets"?}`."""
        if not isinstance(body, dict) or "prompt" not in body:
            return rejected(reason("no_prompt", "No prompt provided", "No prompt provided"))
        extra = body.get("extra_data", {})
        if not isinstance(extra, dict):
            return rejected(reason("invalid_prompt", "extra_data must be an object"))
        try:
            number = float(body["number"]) if "number" in body else None
        except (TypeError, ValueError):
            return rejected(reason("invalid_prompt", "number must be a number",
                                   repr(body["number"])))
        extra = {k: v for k, v in copy.deepcopy(extra).items()
                 if k not in shapes.SENSITIVE_EXTRA}
        client_id = body.get("client_id")
        if client_id is not None:
            client_id = extra["client_id"] = str(client_id)[:MAX_CLIENT_ID]
        targets = body.get("partial_execution_targets")
        prompt = body["prompt"]
        try:
            checked = await self._off_loop(check_prompt, prompt, self.registry,
                                           self.executor.folders,
                                           _ids(targets) if targets is not None else None)
        except PromptRejected as exc:
            return rejected(exc.error, exc.node_errors)
        pnginfo = extra.get("extra_pnginfo")
        checked.workflow.extra[shapes.COMFY] = {
            "prompt": copy.deepcopy(prompt),
            "extra_pnginfo": pnginfo if isinstance(pnginfo, dict) else {}}
        meta = {shapes.COMFY: {"prompt": copy.deepcopy(prompt), "extra_data": extra,
                               "outputs": checked.outputs}}
        prompt_id = body.get("prompt_id")
        try:
            item = self.queue.put(checked.workflow, client_id, meta=meta,
                                  prompt_id=str(prompt_id) if prompt_id is not None else None,
                                  number=number, front=bool(body.get("front")))
        except DuplicatePrompt as exc:
            return rejected(reason("invalid_prompt", str(exc), str(prompt_id)))
        return web.json_response({"prompt_id": item.prompt_id, "number": item.number,
                                  "node_errors": checked.node_errors})

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.queue.remaining()}})

    # ------------------------------------------------------------------ queue
    def queue_shape(self) -> dict[str, Any]:
        running, pending = self.queue.items()
        return {"queue_running": [shapes.queue_tuple(i, self.registry) for i in running],
                "queue_pending": [shapes.queue_tuple(i, self.registry) for i in pending]}

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_shape(), dumps=dumps)

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await _json_or_none(request)
        if isinstance(body, dict):
            if body.get("clear"):
                self.queue.remove_pending(None)
            if "delete" in body:
                self.queue.remove_pending(_ids(body["delete"]))
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.Response:
        body = await _json_or_none(request)
        target = body.get("prompt_id") if isinstance(body, dict) else None
        self.queue.interrupt(str(target) if target is not None else None)
        return web.Response(status=200)

    async def free(self, request: web.Request) -> web.Response:
        body = await _json_or_none(request)
        if isinstance(body, dict) and (body.get("unload_models") or body.get("free_memory")):
            def clear() -> None:
                self.executor.cache.clear()
                release_device_memory()

            await self._off_loop(clear)
        return web.Response(status=200)

    # ------------------------------------------------------------------ history
    async def history(self, request: web.Request) -> web.Response:
        def number(key: str) -> int | None:
            try:
                return int(request.query[key])
            except (KeyError, ValueError):
                return None

        offset = number("offset")
        data = shapes.history(self.queue.history_records(), self.registry,
                              max_items=number("max_items"),
                              offset=offset if offset is not None else -1)
        return web.json_response(data, dumps=dumps)

    async def history_one(self, request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        record = next((r for r in self.queue.history_records() if r.item.prompt_id == pid), None)
        if record is None:
            return web.json_response({})
        return web.json_response({pid: shapes.history_entry(record, self.registry)},
                                 dumps=dumps)

    async def post_history(self, request: web.Request) -> web.Response:
        body = await _json_or_none(request)
        if isinstance(body, dict):
            if body.get("clear"):
                self.queue.forget(None)
            if "delete" in body:
                self.queue.forget(_ids(body["delete"]))
        return web.Response(status=200)

    # ------------------------------------------------------------------ node and model info
    async def object_info(self, request: web.Request) -> web.Response:
        only = request.match_info.get("node_class")
        data = await self._off_loop(object_info, self.registry, self.executor.folders, only)
        return web.json_response(data)

    def _provided(self, name: str, default: Any) -> Any:
        fn = self.registry.provider(name)
        return fn(self.executor.folders) if fn is not None else default

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response(list(await self._off_loop(self._provided, "embeddings", [])))

    async def models(self, request: web.Request) -> web.Response:
        folders = await self._off_loop(self._provided, "model_folders", {})
        return web.json_response(list(folders))

    async def models_in(self, request: web.Request) -> web.Response:
        kind = request.match_info["folder"]
        folders = await self._off_loop(self._provided, "model_folders", {})
        if kind not in folders:
            return web.json_response({"error": f"unknown model folder {kind!r}"}, status=404)
        return web.json_response(list(folders[kind]))

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(system_stats())

    async def extensions(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response(self.features)

    # ------------------------------------------------------------------ installing
    def routes(self) -> dict[Route, Handler]:
        return {
            ("POST", "/prompt"): self.post_prompt, ("GET", "/prompt"): self.get_prompt,
            ("GET", "/queue"): self.get_queue, ("POST", "/queue"): self.post_queue,
            ("POST", "/interrupt"): self.interrupt, ("POST", "/free"): self.free,
            ("GET", "/history"): self.history, ("POST", "/history"): self.post_history,
            ("GET", "/history/{prompt_id}"): self.history_one,
            ("GET", "/view"): self.view, ("POST", "/upload/image"): self.upload,
            ("GET", "/object_info"): self.object_info,
            ("GET", "/object_info/{node_class}"): self.object_info,
            ("GET", "/embeddings"): self.embeddings, ("GET", "/models"): self.models,
            ("GET", "/models/{folder}"): self.models_in,
            ("GET", "/system_stats"): self.system_stats,
            ("GET", "/extensions"): self.extensions, ("GET", "/features"): self.get_features,
            ("GET", "/ws"): self.hub.handle,
        }

    def shared(self, ours: Mapping[Route, Handler]) -> dict[Route, Handler]:
        """Handlers for the `/api/` paths both APIs have, given our own handlers there."""
        our_prompt = ours[("POST", "/api/prompt")]
        our_history = ours[("GET", "/api/history")]
        our_history_one = ours[("GET", "/api/history/{prompt_id}")]

        async def prompt(request: web.Request) -> web.StreamResponse:
            try:
                body = await request.json()
            except ValueError:
                return await our_prompt(request)
            if isinstance(body, dict) and "prompt" in body and "workflow" not in body:
                return await self.submit(body)
            return await our_prompt(request)

        async def queue(request: web.Request) -> web.StreamResponse:
            both = {**self.queue.snapshot(), **self.queue_shape()}
            return web.json_response(both, dumps=dumps)

        async def history(request: web.Request) -> web.StreamResponse:
            if "max_items" in request.query or "offset" in request.query:
                return await self.history(request)
            return await our_history(request)

        async def history_one(request: web.Request) -> web.StreamResponse:
            pid = request.match_info["prompt_id"]
            record = next((r for r in self.queue.history_records()
                           if r.item.prompt_id == pid), None)
            if record is not None and "prompt" in shapes.comfy_meta(record.item):
                return await self.history_one(request)
            return await our_history_one(request)

        return {("POST", "/api/prompt"): prompt, ("GET", "/api/queue"): queue,
                ("GET", "/api/history"): history,
                ("GET", "/api/history/{prompt_id}"): history_one}

    def install(self, app: web.Application, taken: set[Route]) -> None:
        """Add every route at its bare path, and under `/api/` unless `taken` (ours)."""
        for (method, path), handler in self.routes().items():
            for full in (path, "/api" + path):
                if (method, full) not in taken:
                    app.router.add_route(method, full, handler)
