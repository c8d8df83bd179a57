"""Request bodies within limits on every route, and every error answered as JSON.

One middleware, inside the security guard, so no handler has to remember:

* a body (with a `Content-Length` or chunked without one) is read up to its route's limit
  and refused with 413 past it: 8 MiB (a workflow's limit) for every JSON route, 64 MiB for
  `POST /api/workflows/import` (a PNG carrying a workflow may be a large picture); the
  multipart upload routes stream their parts against their own limit and are left alone;
* a body that opens a JSON object or array must be strict JSON (see
  `strict_json.parse_json`: no NaN, no lone surrogates, at most 64 levels deep), else 400 with
  code `invalid_json` or `too_deep` — before a handler parses it with the standard library,
  which would accept NaN and recurse until it fails. Other bodies (a login form, a bare
  number) reach their handler, which refuses what is not an object it expects;
* an exception a handler lets escape becomes a JSON 500 (logged with its traceback), and
  aiohttp's own errors (404 for an unknown path, 405, ...) a JSON body with their status,
  so a client never has to parse a plain-text error page.

Errors have our shape, `{"errors": [{node, input, code, message}]}`, plus ComfyUI's
`{"error": {type, message, details, extra_info}, "node_errors": {}}` beside it, so a client
of either API reads the reason the way it already does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from graph_runtime.server.responses import error_response
from graph_runtime.strict_json import parse_json

log = logging.getLogger("noodle.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

MAX_JSON_BODY_BYTES = 8 * 2**20  # the largest workflow a client may save or queue
# Routes whose body is a file rather than JSON, with their own size limits.
RAW_BODY_LIMITS: Mapping[str, int] = {"/api/workflows/import": 64 * 2**20}
# Multipart uploads: their handlers read part by part against the upload limit.
STREAMED = frozenset({"/api/upload/image", "/upload/image"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def limit_error(status: int, code: str, message: str) -> web.Response:
    """Our error shape with ComfyUI's beside it (see the module docstring)."""
    return error_response(status, code, message,
                          error={"type": code, "message": message, "details": "",
                                 "extra_info": {}},
                          node_errors={})


def _route_path(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


async def _checked_body(request: web.Request, path: str) -> web.Request | web.Response:
    """The request with its body read (handlers then read it from memory), or the error."""
    cap = RAW_BODY_LIMITS.get(path, MAX_JSON_BODY_BYTES)
    # aiohttp refuses a body of `client_max_size` bytes or more, counting as it reads, so
    # a chunked body is stopped there too and never held whole.
    request = request.clone(client_max_size=cap + 1)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return limit_error(413, "too_large", f"the request body is over the limit of "
                                             f"{cap} bytes for {path}")
    if path in RAW_BODY_LIMITS or body.lstrip(b" \t\r\n")[:1] not in (b"{", b"["):
        return request
    try:
        parse_json(body)
    except json.JSONDecodeError as exc:
        return limit_error(400, "invalid_json", f"the request body is not JSON: {exc}")
    except ValueError as exc:
        code = "too_deep" if "nested" in str(exc) else "invalid_json"
        return limit_error(400, code, f"the request body is not acceptable JSON: {exc}")
    return request


def _as_json(exc: web.HTTPException) -> web.Response:
    reason = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason
    response = limit_error(exc.status, exc.reason.lower().replace(" ", "_"), reason)
    for name in ("Allow", "Retry-After", "WWW-Authenticate"):
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response


def body_limits_middleware() -> Middleware:
    """The middleware; register it after the request guards and the authentication (so a
    refused request is never read)."""

    @web.middleware
    async def limits(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = _route_path(request)
        if request.method in BODY_METHODS and request.body_exists and path not in STREAMED:
            checked = await _checked_body(request, path)
            if isinstance(checked, web.Response):
                return checked
            request = checked
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            return _as_json(exc)
        except Exception:
            if request.headers.get("Upgrade", "").lower() == "websocket":
                raise  # the handshake is answered already: nothing left to send
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return limit_error(500, "internal_error", "the server failed to answer this "
                               "request; the error is in its log")

    return limits
