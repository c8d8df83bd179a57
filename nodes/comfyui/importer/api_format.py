"""ComfyUI's API ("prompt") format, both ways.

In: `{id: {"class_type", "inputs", "_meta": {"title"}}}` becomes a v1 workflow with the
same node ids (ComfyUI clients match their results and events by those ids), links
`[source id, output index]` named by the source node's outputs, `{"__value__": [...]}`
unwrapped to the literal list, and `_meta.title` as the node's title. As ComfyUI's server
does, inputs a known node does not have are ignored (clients add such keys); they are kept
aside under the node's `comfyui.ignored_inputs`, never run. Nodes get a simple layered
layout, since the format has no positions.

Out: `api_prompt` writes a v1 workflow's nodes back as a prompt, for the PNG chunks and
history entries ComfyUI tools read.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from graph_runtime.registry import Registry
from graph_runtime.workflow import FORMAT, VERSION, WorkflowFormatError, is_link

_PLACEHOLDER = re.compile(r"^output(\d+)$")
COLUMN_WIDTH, ROW_HEIGHT = 380, 240


def output_name(registry: Registry, class_type: Any, index: int) -> str:
    """The name of output `index` of a node type; `output<index>` for a type we do not
    know (or an index it does not have), which validation then reports."""
    definition = registry.get(class_type) if isinstance(class_type, str) else None
    if definition is not None and 0 <= index < len(definition.outputs):
        return definition.outputs[index].name
    return f"output{index}"


def output_index(registry: Registry, class_type: Any, name: str) -> int:
    definition = registry.get(class_type) if isinstance(class_type, str) else None
    if definition is not None:
        for i, out in enumerate(definition.outputs):
            if out.name == name:
                return i
    match = _PLACEHOLDER.match(name)
    return int(match.group(1)) if match else 0


def _is_link_value(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and isinstance(value[0], (str, int)) and not isinstance(value[0], bool)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def is_api_prompt(data: Any) -> bool:
    """A non-empty object whose every value is a node entry (`class_type` or `inputs`)."""
    return (isinstance(data, dict) and bool(data)
            and all(isinstance(v, dict) and ("class_type" in v or "inputs" in v)
                    for v in data.values()))


def _columns(nodes: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Each node's distance from the sources (a link back onto the path that reached a node
    is ignored), walked without recursion: a chain of thousands of nodes is a valid prompt."""
    sources = {nid: [v["from"] for v in nd["inputs"].values()
                     if is_link(v) and isinstance(v["from"], str) and v["from"] in nodes]
               for nid, nd in nodes.items()}
    depth: dict[str, int] = {}
    for root in nodes:
        path, on_path = [root], {root}
        pending = [iter(sources[root])] if root not in depth else []
        while pending:
            nid = path[-1]
            step = next((s for s in pending[-1] if s not in on_path and s not in depth), None)
            if step is not None:
                path.append(step)
                on_path.add(step)
                pending.append(iter(sources[step]))
                continue
            depth[nid] = 1 + max((depth[s] for s in sources[nid] if s not in on_path),
                                 default=-1)
            path.pop()
            on_path.discard(nid)
            pending.pop()
    return depth


def _layout(nodes: dict[str, dict[str, Any]]) -> None:
    """Columns by distance from the sources, rows in id order within a column."""
    depth = _columns(nodes)
    rows: dict[int, int] = {}
    for nid in nodes:
        column = depth[nid]
        row = rows.get(column, 0)
        rows[column] = row + 1
        nodes[nid].setdefault("ui", {})["pos"] = [40 + column * COLUMN_WIDTH,
                                                  40 + row * ROW_HEIGHT]


def import_api_prompt(data: Any, registry: Registry) -> dict[str, Any] | None:
    """The v1 workflow of an API prompt, or None when `data` is not one."""
    if not is_api_prompt(data):
        return None
    original, data = data, copy.deepcopy(data)  # the record keeps the prompt as given
    nodes: dict[str, dict[str, Any]] = {}
    for nid, entry in data.items():
        class_type = entry.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise WorkflowFormatError("the node has no class_type", f"node {nid!r}")
        raw_inputs = entry.get("inputs", {})
        if not isinstance(raw_inputs, dict):
            raise WorkflowFormatError("\"inputs\" must be an object", f"node {nid!r}.inputs")
        definition = registry.get(class_type)
        inputs: dict[str, Any] = {}
        ignored: dict[str, Any] = {}
        for name, value in raw_inputs.items():
            if definition is not None and name not in definition.inputs:
                ignored[name] = value
            elif _is_link_value(value):
                source = data.get(str(value[0]))
                source_type = source.get("class_type") if isinstance(source, dict) else None
                inputs[name] = {"from": str(value[0]),
                                "output": output_name(registry, source_type, value[1])}
            elif isinstance(value, dict) and set(value) == {"__value__"}:
                inputs[name] = value["__value__"]
            else:
                inputs[name] = value
        node: dict[str, Any] = {"type": class_type, "inputs": inputs, "ui": {}}
        meta = entry.get("_meta")
        if isinstance(meta, dict) and isinstance(meta.get("title"), str):
            node["ui"]["title"] = meta["title"]
        if ignored:
            node["comfyui"] = {"ignored_inputs": ignored}
        nodes[str(nid)] = node
    _layout(nodes)
    return {"format": FORMAT, "version": VERSION, "nodes": nodes,
            "comfyui": {"prompt": copy.deepcopy(original), "extra_pnginfo": {}}}


def api_value(value: Any, nodes: Mapping[str, Mapping[str, Any]], registry: Registry) -> Any:
    """One v1 input value in API form: a link as `[id, index]`, a list literal wrapped."""
    if is_link(value):
        source = nodes.get(value["from"]) or {}
        return [value["from"], output_index(registry, source.get("type"), value["output"])]
    if isinstance(value, list):
        return {"__value__": value}
    return value


def api_prompt(nodes: Mapping[str, Mapping[str, Any]], registry: Registry) -> dict[str, Any]:
    """A v1 workflow's nodes as a ComfyUI API prompt (titles under `_meta`)."""
    prompt: dict[str, Any] = {}
    for nid, nd in nodes.items():
        definition = registry.get(nd.get("type"))
        extra = nd.get("comfyui") if isinstance(nd.get("comfyui"), dict) else {}
        inputs = dict(extra.get("ignored_inputs") or {})  # kept in API form
        for name, value in (nd.get("inputs") or {}).items():
            inputs[name] = api_value(value, nodes, registry)
        ui = nd.get("ui") if isinstance(nd.get("ui"), dict) else {}
        title = ui.get("title") or (definition.display_name if definition else "") or nd["type"]
        prompt[nid] = {"class_type": nd["type"], "inputs": inputs, "_meta": {"title": title}}
    return prompt
