"""Strict JSON for documents from outside: what RFC 8259 allows, and no deeper than needed.

Python's parser accepts NaN, Infinity, numbers too large for a float, lone surrogate escapes
and any nesting; each of these breaks something later (a browser's JSON, a database write,
a copy that runs out of stack). Workflows, request bodies and PNG chunks are read here.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Far deeper than any workflow (a ComfyUI prompt with its UI graph is about 10 levels), and
# far from Python's recursion limit, which copying or writing a document would reach.
MAX_JSON_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _check_depth(data: Any, max_depth: int) -> None:
    """Walk the containers without recursion; the document's top level is depth 1."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"nested more than {max_depth} levels deep")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def parse_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON as RFC 8259 defines it, for documents from outside: no NaN or Infinity (nor
    numbers too large for a float), no lone surrogate escapes (text that cannot be written
    out as UTF-8 again), at most `max_depth` levels of nesting. Python's own parser accepts
    all of these, and each one breaks something later: a browser's JSON, a file or
    database write, or a copy that runs out of stack. Raises ValueError saying which
    (json.JSONDecodeError, with the position, for bad syntax)."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8")  # UnicodeDecodeError is a ValueError
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"nested more than {max_depth} levels deep") from None
    if text.count("[") + text.count("{") > max_depth:  # else it cannot be too deep
        _check_depth(data, max_depth)
    if _SURROGATE_ESCAPE.search(text):  # rare: check exactly
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone UTF-16 surrogate escape") from None
    return data
