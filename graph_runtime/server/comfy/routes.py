"""ComfyUI's HTTP routes over our queue, history and folders.

Every route is served at its bare path (what ComfyUI's Python clients call) and under
`/api/` (what its web front end calls). Where `/api/...` is also one of our own routes, one
handler serves both, telling them apart by the request (see `shared` and docs/http-api.md):
POST /api/prompt by body (`{"prompt": ...}` is ComfyUI's, `{"workflow": ...}` ours);
GET /api/queue answers with both shapes at once; GET /api/history is ComfyUI's when paged
its way (`max_items`, or `offset` without our `limit`; its front end always sends
`max_items`) and ours otherwise; GET /api/history/{id} follows the route the prompt came in
by. History responses are read and encoded off the event loop, a page at a time.

Model lists and embeddings are the node library's knowledge: they come from the
registry's "model_folders" and "embeddings" providers, so the engine stays generic.
"""

from __future__ import annotations

import asyncio
import copy
import math
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
from graph_runtime.server.history import our_history_one, read_record, stream_history
from graph_runtime.server.hub import Hub, InvalidClientId, check_client_id
from graph_runtime.server.prompt_queue import DuplicatePrompt, HistoryRecord, PromptQueue
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
            if number is not None and not math.isfinite(number):
                raise ValueError("not finite")
        except (TypeError, ValueError, OverflowError):
            return rejected(reason("invalid_prompt", "number must be a finite number",
                                   repr(body["number"])[:100]))
        extra = {k: v for k, v in copy.deepcopy(extra).items()
                 if k not in shapes.SENSITIVE_EXTRA}
        try:
            client_id = check_client_id(body.get("client_id"))
        except InvalidClientId as exc:
            return rejected(reason("invalid_prompt", "Invalid client_id", str(exc)))
        if client_id is not None:
            extra["client_id"] = client_id
        targets = body.get("partial_execution_targets")
        prompt = body["prompt"]
        try:
            checked = await self._off_loop(check_prompt, prompt, self.registry,
                                           self.executor.folders,
                                           _ids(targets) if targets is not None else None)
        except PromptRejected as exc:
            return rejected(exc.error, exc.node_errors)
        meta = {shapes.COMFY: shapes.keep_submitted(checked.workflow, prompt, extra,
                                                    checked.outputs)}
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
    def _history_member(self, record: HistoryRecord) -> str:
        """`"prompt_id": entry`, one member of `GET /history`'s object."""
        return (dumps(record.prompt.prompt_id) + ":"
                + dumps(shapes.history_entry(record, self.registry)))

    async def history(self, request: web.Request) -> web.StreamResponse:
        """Oldest first, streamed a page at a time (see `history`), as ComfyUI pages it."""
        def number(key: str) -> int | None:
            try:
                return int(request.query[key])
            except (KeyError, ValueError):
                return None

        offset, limit = shapes.history_page(self.queue.history_count(), number("max_items"),
                                            number("offset"))
        return await stream_history(request, self.queue, offset, limit,
                                    self._history_member, brackets="{}")

    async def history_one(self, request: web.Request,
                          record: HistoryRecord | None = None) -> web.Response:
        """`{prompt_id: entry}`, or `{}` while unknown. `record` when already read."""
        if record is None:
            record = await read_record(self.queue, request.match_info["prompt_id"])
        if record is None:
            return web.json_response({})
        member = await self._off_loop(self._history_member, record)
        return web.Response(text="{" + member + "}", content_type="application/json")

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
            query = request.query
            if "limit" not in query and ("max_items" in query or "offset" in query):
                return await self.history(request)
            return await our_history(request)

        async def history_one(request: web.Request) -> web.StreamResponse:
            record = await read_record(self.queue, request.match_info["prompt_id"])
            if record is not None and shapes.sent_by_comfyui(record.prompt.meta):
                return await self.history_one(request, record)
            return await our_history_one(request, self.queue, record)

        return {("POST", "/api/prompt"): prompt, ("GET", "/api/queue"): queue,
                ("GET", "/api/history"): history,
                ("GET", "/api/history/{prompt_id}"): history_one}

    def install(self, app: web.Application, taken: set[Route]) -> None:
        """Add every route at its bare path, and under `/api/` unless `taken` (ours)."""
        for (method, path), handler in self.routes().items():
            for full in (path, "/api" + path):
                if (method, full) not in taken:
                    app.router.add_route(method, full, handler)
