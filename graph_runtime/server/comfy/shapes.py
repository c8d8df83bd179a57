"""Our queue and history as ComfyUI shows them: 5-tuples, history entries, API prompts.

A queue item in ComfyUI is `[number, prompt_id, prompt, extra_data, outputs_to_execute]`,
and a history entry repeats it under "prompt" beside the outputs (keyed by node id), the
status with its event log, and per-node "meta". Prompts submitted through ComfyUI's route
keep exactly what was sent (clients find their prompt in the history by comparing it).
Prompts submitted as v1 workflows appear too, one queue being shared: their prompt is the
workflow written in API format.

A submitted prompt (and its `extra_pnginfo`) is kept once, in the workflow's ComfyUI data,
where nodes that save images read it; the item's meta only says it is there, so the store
does not hold every prompt twice.
"""

from __future__ import annotations

import copy
from typing import Any

from graph_runtime.graph import output_nodes
from graph_runtime.registry import Registry
from graph_runtime.server.prompt_queue import HistoryRecord, QueueItem
from graph_runtime.workflow import Workflow, is_link

COMFY = "comfyui"  # the key of ComfyUI's data in a queue item's `meta`
SENSITIVE_EXTRA = ("auth_token_comfy_org", "api_key_comfy_org")


def comfy_meta(item: QueueItem) -> dict[str, Any]:
    """The item's ComfyUI data (created empty for prompts submitted as v1 workflows)."""
    return item.meta.setdefault(COMFY, {})


def api_prompt(wf: Workflow, registry: Registry) -> dict[str, Any]:
    """A v1 workflow in ComfyUI's API format: links become `[node id, output index]`."""
    prompt: dict[str, Any] = {}
    for nid, nd in wf.nodes.items():
        inputs: dict[str, Any] = {}
        for name, value in (nd.get("inputs") or {}).items():
            if is_link(value):
                src = wf.nodes.get(value["from"], {})
                definition = registry.get(src.get("type"))
                names = [o.name for o in definition.outputs] if definition is not None else []
                index = names.index(value["output"]) if value.get("output") in names else 0
                inputs[name] = [value["from"], index]
            elif isinstance(value, list):
                inputs[name] = {"__value__": value}
            else:
                inputs[name] = value
        definition = registry.get(nd.get("type"))
        title = (nd.get("ui") or {}).get("title") or (
            definition.display_name if definition is not None else "") or nd.get("type")
        prompt[nid] = {"class_type": nd.get("type"), "inputs": inputs, "_meta": {"title": title}}
    return prompt


def keep_submitted(workflow: Workflow, prompt: dict[str, Any], extra_data: dict[str, Any],
                   outputs: list[str]) -> dict[str, Any]:
    """Put what a ComfyUI client sent into `workflow`; returns the item's ComfyUI meta."""
    pnginfo = extra_data.get("extra_pnginfo")
    in_workflow = isinstance(pnginfo, dict)
    workflow.extra[COMFY] = {"prompt": copy.deepcopy(prompt),
                             "extra_pnginfo": pnginfo if in_workflow else {}}
    kept = {k: v for k, v in extra_data.items() if not (in_workflow and k == "extra_pnginfo")}
    return {"submitted": True, "pnginfo": in_workflow, "extra_data": kept,
            "outputs": list(outputs)}


def sent_by_comfyui(meta: dict[str, Any]) -> bool:
    """Whether a prompt with this `meta` came in through ComfyUI's route."""
    data = meta.get(COMFY)
    return isinstance(data, dict) and bool(data.get("submitted"))


def submitted_prompt(item: QueueItem) -> dict[str, Any] | None:
    """The API-format prompt a ComfyUI client sent; None for a v1 workflow."""
    if not sent_by_comfyui(item.meta):
        return None
    data = item.workflow.extra.get(COMFY)
    return data.get("prompt") if isinstance(data, dict) else None


def _extra_data(item: QueueItem) -> dict[str, Any]:
    meta = comfy_meta(item)
    extra = dict(meta.get("extra_data", {}))
    data = item.workflow.extra.get(COMFY)
    if meta.get("pnginfo") and isinstance(data, dict):
        extra["extra_pnginfo"] = data.get("extra_pnginfo", {})
    return extra


def queue_tuple(item: QueueItem, registry: Registry) -> list[Any]:
    """`[number, prompt_id, prompt, extra_data, outputs_to_execute]`."""
    prompt = submitted_prompt(item)
    if prompt is not None:
        return [item.number, item.prompt_id, prompt, _extra_data(item),
                list(comfy_meta(item).get("outputs", []))]
    extra = {"client_id": item.client_id} if item.client_id is not None else {}
    return [item.number, item.prompt_id, api_prompt(item.workflow, registry), extra,
            output_nodes(item.workflow, registry)]


def _node_meta(nid: str) -> dict[str, Any]:
    return {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}


def history_entry(record: HistoryRecord, registry: Registry) -> dict[str, Any]:
    """One finished prompt as ComfyUI's history lists it."""
    entry, item = record.entry, record.item
    outputs = {nid: ui for nid, ui in (entry.get("outputs") or {}).items() if ui}
    ok = entry.get("status") == "success"
    prompt = queue_tuple(item, registry)
    prompt[3] = {k: v for k, v in prompt[3].items() if k not in SENSITIVE_EXTRA}
    return {
        "prompt": prompt,
        "outputs": outputs,
        "status": {"status_str": "success" if ok else "error", "completed": ok,
                   "messages": list(comfy_meta(item).get("messages", []))},
        "meta": {nid: _node_meta(nid) for nid in outputs},
    }


def history_page(total: int, max_items: int | None = None,
                 offset: int | None = None) -> tuple[int, int | None]:
    """`GET /history`'s `(offset, limit)` among `total` entries, oldest first:
    `max_items` alone gives the newest ones; no `max_items`, everything from `offset`."""
    start = -1 if offset is None else offset
    if start < 0 and max_items is not None:
        start = total - max_items
    return max(start, 0), (max(max_items, 0) if max_items is not None else None)
