"""History over HTTP: read from the store a page at a time, encoded off the event loop.

A history can hold thousands of entries, each with its whole workflow, so no response is
built in one piece: entries are read `BATCH` at a time, each batch is read and encoded on
a worker thread, and the JSON is streamed out as it is made. Only one batch of workflows
is in memory at a time, and the event loop only copies bytes.

Our `GET /api/history` is paged with `limit` (default `DEFAULT_LIMIT`, at most
`MAX_LIMIT`) and `offset` (0: the oldest entry). Without `offset` it answers the newest
`limit` entries; entries are oldest first either way, and `X-Total-Count` gives the number
of entries, so a client can page back from there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from aiohttp import web

from graph_runtime.server.prompt_queue import HistoryRecord, PromptQueue
from graph_runtime.server.responses import error_response

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
BATCH = 32
Encode = Callable[[HistoryRecord], str]


class PageError(ValueError):
    """A paging parameter that is not a non-negative integer."""


def _count(query: Mapping[str, str], key: str) -> int | None:
    if key not in query:
        return None
    try:
        value = int(query[key])
    except ValueError:
        raise PageError(f"{key} must be an integer, got {query[key]!r}") from None
    if value < 0:
        raise PageError(f"{key} must not be negative, got {value}")
    return value


def our_page(query: Mapping[str, str], total: int) -> tuple[int, int]:
    """`(offset, limit)` of our `GET /api/history` (see the module docstring)."""
    limit = _count(query, "limit")
    limit = DEFAULT_LIMIT if limit is None else min(limit, MAX_LIMIT)
    offset = _count(query, "offset")
    return (max(total - limit, 0) if offset is None else offset), limit


def _encode_batch(queue: PromptQueue, start: int, limit: int, encode: Encode,
                  first: bool) -> tuple[bytes, int, int]:
    """Read and encode up to `limit` entries from `start`: (JSON, next start, how many)."""
    records = queue.history_from(start, limit)
    if not records:
        return b"", start, 0
    text = ",".join(encode(r) for r in records)
    return (text if first else "," + text).encode("utf-8"), records[-1].id + 1, len(records)


async def stream_history(request: web.Request, queue: PromptQueue, offset: int,
                         limit: int | None, encode: Encode, brackets: str = "[]",
                         headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """Entries `offset..offset+limit` (all from `offset` when `limit` is None), each
    `encode`d, between `brackets` ("[]" for a list, "{}" when each encodes as a member)."""
    loop = asyncio.get_running_loop()
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8",
                                           **(headers or {})})
    await response.prepare(request)
    await response.write(brackets[0].encode())
    start = await loop.run_in_executor(None, queue.history_start, offset)
    left = queue.history_count() - offset  # as the history stands now
    left = left if limit is None else min(left, limit)
    first = True
    while start is not None and left > 0:
        chunk, start, got = await loop.run_in_executor(
            None, _encode_batch, queue, start, min(BATCH, left), encode, first)
        if not got:
            break
        await response.write(chunk)
        left, first = left - got, False
    await response.write(brackets[1].encode())
    await response.write_eof()
    return response


def our_entry(record: HistoryRecord) -> str:
    return record.entry_json()


async def our_history(request: web.Request, queue: PromptQueue) -> web.StreamResponse:
    """`GET /api/history[?limit=&offset=]`: a page of our entries, oldest first."""
    total = queue.history_count()
    try:
        offset, limit = our_page(request.query, total)
    except PageError as exc:
        return error_response(400, "invalid_request", str(exc))
    return await stream_history(request, queue, offset, limit, our_entry,
                                headers={"X-Total-Count": str(total)})


async def read_record(queue: PromptQueue, prompt_id: str) -> HistoryRecord | None:
    """One finished prompt, read off the event loop (its workflow may be large)."""
    return await asyncio.get_running_loop().run_in_executor(None, queue.history_record,
                                                            prompt_id)


async def our_history_one(request: web.Request, queue: PromptQueue,
                          record: HistoryRecord | None = None) -> web.Response:
    """`GET /api/history/{id}`: our entry, or 404. `record` when already read."""
    if record is None:
        record = await read_record(queue, request.match_info["prompt_id"])
    if record is None:
        return error_response(404, "not_found", "no such prompt in the history")
    body = await asyncio.get_running_loop().run_in_executor(None, our_entry, record)
    return web.Response(text=body, content_type="application/json")
