"""Our queue and history as ComfyUI shows them: 5-tuples, history entries, API prompts.

A queue item in ComfyUI is `[number, prompt_id, prompt, extra_data, outputs_to_execute]`,
and a history entry repeats it under "prompt" beside the outputs (keyed by node id), the
status with its event log, and per-node "meta". Prompts submitted through ComfyUI's route
keep exactly what was sent (clients find their prompt in the history by comparing it).
Prompts submitted as v1 workflows appear too, one queue being shared: their prompt is the
workflow written in API format.
"""

from __future__ import annotations

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


def queue_tuple(item: QueueItem, registry: Registry) -> list[Any]:
    """`[number, prompt_id, prompt, extra_data, outputs_to_execute]`."""
    data = comfy_meta(item)
    if "prompt" in data:
        return [item.number, item.prompt_id, data["prompt"], data.get("extra_data", {}),
                list(data.get("outputs", []))]
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


def history(records: list[HistoryRecord], registry: Registry, max_items: int | None = None,
            offset: int = -1) -> dict[str, Any]:
    """`GET /history`: oldest first; `max_items` alone gives the newest ones."""
    if offset < 0 and max_items is not None:
        offset = len(records) - max_items
    offset = max(offset, 0)
    chosen = records[offset:]
    if max_items is not None:
        chosen = chosen[:max(max_items, 0)]
    return {r.item.prompt_id: history_entry(r, registry) for r in chosen}
