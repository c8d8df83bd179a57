"""JSON responses shared by every route, so errors have one shape everywhere.

Errors are `{"errors": [{node, input, code, message}]}`, the shape validation uses, so a
client handles a malformed request and an invalid workflow with the same code.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from aiohttp import web

# Values the standard encoder cannot write (paths, numpy scalars) are sent as text.
dumps = functools.partial(json.dumps, default=str)


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """One request-level error (not tied to a node or input)."""
    return web.json_response({"errors": [{"node": None, "input": None, "code": code,
                                          "message": message}], **extra}, status=status)


def errors_response(errors: list[dict[str, Any]], status: int = 400) -> web.Response:
    """Validation errors, as `graph.validate` lists them."""
    return web.json_response({"errors": errors}, status=status)
