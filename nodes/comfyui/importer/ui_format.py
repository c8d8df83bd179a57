"""ComfyUI's UI ("workflow") format -> a v1 workflow.

ComfyUI's server never sees this format: its front end turns it into an API prompt. The
import does that same conversion (see `sources` for how links are followed and `widgets`
for how widget values are named) and keeps what the canvas shows: positions, sizes,
titles, colours, groups, the viewport, native reroutes (`ui.reroutes`, and per node
`ui.link_reroutes`: input name -> the reroute its link passes last) and notes
(`ui.notes`). Front-end-only nodes (Note, MarkdownNote, Reroute, PrimitiveNode) and muted
or bypassed nodes are not nodes of the result; every other node is, known type or not, so
validation can name each unknown one.

The result also records, under `comfyui`, the API prompt it corresponds to and the UI
document itself (`extra_pnginfo.workflow`), so images saved from it carry the chunks
ComfyUI reads back.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from graph_runtime.registry import NodeDef, Registry
from graph_runtime.workflow import FORMAT, VERSION
from nodes.comfyui.importer.api_format import api_prompt, api_value, output_name
from nodes.comfyui.importer.graph_model import read_graph, subgraph_definitions, xy
from nodes.comfyui.importer.sources import BYPASSED, MUTED, FromNode, FromValue, Resolver
from nodes.comfyui.importer.subgraphs import Scope, Subgraphs
from nodes.comfyui.importer.widgets import widget_values

NOTES = frozenset({"Note", "MarkdownNote"})
FRONT_END_ONLY = NOTES | {"Reroute", "PrimitiveNode"}
_UI_COPIED = ("color", "bgcolor")


def _id_order(node_id: str) -> tuple[tuple[int, int | str], ...]:
    """Numbers by value ("2" before "10"), level by level ("5:3" after "5", before "6")."""
    return tuple((0, int(p)) if _is_number(p) else (1, p) for p in node_id.split(":"))


def _is_number(part: str) -> bool:
    """What `int()` reads: ASCII digits, one optional minus ("²" is a digit to `isdigit`)."""
    digits = part.removeprefix("-")
    return digits.isascii() and digits.isdigit()


def is_ui_workflow(data: Any) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("nodes"), list)
            and any(k in data for k in ("links", "last_node_id", "state", "version")))


class _Importer:
    def __init__(self, data: dict[str, Any], registry: Registry) -> None:
        self.registry = registry
        self.subgraphs = Subgraphs(subgraph_definitions(data))
        self.resolver = Resolver(self.subgraphs)
        self.root = Scope(read_graph(data))
        self.groups: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []

    # ------------------------------------------------------------ walking
    def real_nodes(self, scope: Scope) -> Iterator[tuple[Scope, str, dict[str, Any]]]:
        """The nodes that become workflow nodes, depth first through subgraphs; notes and
        groups are collected on the way."""
        self.groups += [self._shift_group(scope, g) for g in scope.graph.groups]
        for nid, node in scope.graph.nodes.items():
            kind = node["type"]
            if kind in NOTES:
                self.notes.append(self._note(scope, node))
            if kind in FRONT_END_ONLY or node.get("mode", 0) in (MUTED, BYPASSED):
                continue
            if self.subgraphs.is_instance(node):
                yield from self.real_nodes(self.subgraphs.child(scope, nid))
            else:
                yield scope, nid, node

    def _shift_group(self, scope: Scope, group: dict[str, Any]) -> dict[str, Any]:
        out = dict(group)
        box = group.get("bounding")
        if scope.parent is not None and isinstance(box, list) and len(box) == 4:
            out["bounding"] = [box[0] + scope.offset[0], box[1] + scope.offset[1], *box[2:]]
        return out

    def _note(self, scope: Scope, node: dict[str, Any]) -> dict[str, Any]:
        values = node.get("widgets_values")
        text = values[0] if isinstance(values, list) and values else ""
        note: dict[str, Any] = {"title": node.get("title") or node["type"], "text": text,
                                "markdown": node["type"] == "MarkdownNote"}
        for key, value in (("pos", scope.place(node.get("pos"))), ("size", xy(node.get("size")))):
            if value is not None:
                note[key] = value
        return note

    # ------------------------------------------------------------ one node
    def _link_value(self, source: FromNode | FromValue) -> Any:
        if isinstance(source, FromValue):
            return source.value
        origin = source.scope.graph.nodes.get(source.node_id)
        kind = origin.get("type") if origin is not None else None
        return {"from": source.full_id, "output": output_name(self.registry, kind, source.slot)}

    def convert(self, scope: Scope, node: dict[str, Any]) -> dict[str, Any]:
        definition: NodeDef | None = self.registry.get(node["type"])
        saved = node.get("widgets_values")
        extra: dict[str, Any] = {}
        controls: dict[str, str] = {}
        if definition is not None:
            found = widget_values(definition, saved)
            inputs, controls = found.values, found.controls
        elif isinstance(saved, dict):
            inputs = dict(saved)
        else:
            inputs = {}
            if saved:
                extra["widgets_values"] = saved  # unnamed: kept for the type's sake
        reroutes: dict[str, Any] = {}
        for entry in node.get("inputs") or []:
            if not isinstance(entry, dict) or entry.get("link") is None:
                continue
            widget = entry.get("widget") if isinstance(entry.get("widget"), dict) else {}
            name = widget.get("name") or entry.get("name")
            link = scope.graph.links.get(str(entry["link"]))
            if not isinstance(name, str) or link is None:
                continue
            source = self.resolver.resolve(scope, link, entry.get("type") or link.type)
            if source is None:
                continue  # fed by a muted node, or an empty bypass: left unconnected
            inputs[name] = self._link_value(source)
            if link.parent is not None and scope.parent is None:
                reroutes[name] = link.parent
        if definition is not None:
            ignored = {k: inputs.pop(k) for k in list(inputs) if k not in definition.inputs}
            if ignored:
                extra["ignored_inputs"] = ignored
        out: dict[str, Any] = {"type": node["type"], "inputs": inputs,
                               "ui": self._node_ui(scope, node, controls, reroutes)}
        if extra:
            out["comfyui"] = extra
        return out

    def _node_ui(self, scope: Scope, node: dict[str, Any], controls: dict[str, str],
                 reroutes: dict[str, Any]) -> dict[str, Any]:
        ui: dict[str, Any] = {}
        pos, size = scope.place(node.get("pos")), xy(node.get("size"))
        if pos is not None:
            ui["pos"] = pos
        if size is not None:
            ui["size"] = size
        if isinstance(node.get("title"), str) and node["title"]:
            ui["title"] = node["title"]
        flags = node.get("flags") if isinstance(node.get("flags"), dict) else {}
        if flags.get("collapsed"):
            ui["collapsed"] = True
        for key in _UI_COPIED:
            if isinstance(node.get(key), str):
                ui[key] = node[key]
        if controls:
            ui["control_after_run"] = controls
        if reroutes:
            ui["link_reroutes"] = reroutes
        return ui

    # ------------------------------------------------------------ whole document
    def top_ui(self, data: dict[str, Any]) -> dict[str, Any]:
        extra = data.get("extra") if isinstance(data.get("extra"), dict) else {}
        ui: dict[str, Any] = {"groups": self.groups}
        ds = extra.get("ds") if isinstance(extra.get("ds"), dict) else {}
        offset, scale = xy(ds.get("offset")), ds.get("scale")
        if offset is not None and isinstance(scale, (int, float)):
            ui["viewport"] = {"offset": offset, "scale": scale}
        raw = data.get("reroutes") if isinstance(data.get("reroutes"), list) else \
            extra.get("reroutes")
        reroutes = [{k: r[k] for k in ("id", "parentId", "pos") if k in r}
                    for r in raw or [] if isinstance(r, dict) and "id" in r]
        if reroutes:
            ui["reroutes"] = reroutes
        if self.notes:
            ui["notes"] = self.notes
        return ui

    def run(self, data: dict[str, Any]) -> dict[str, Any]:
        found = {scope.full_id(nid): self.convert(scope, node)
                 for scope, nid, node in self.real_nodes(self.root)}
        nodes = {nid: found[nid] for nid in sorted(found, key=_id_order)}
        for nd in nodes.values():
            ignored = nd.get("comfyui", {}).get("ignored_inputs")
            if ignored:  # kept in API form, like the API importer keeps them
                nd["comfyui"]["ignored_inputs"] = {
                    k: api_value(v, nodes, self.registry) for k, v in ignored.items()}
        return {"format": FORMAT, "version": VERSION, "nodes": nodes, "ui": self.top_ui(data),
                "comfyui": {"prompt": api_prompt(nodes, self.registry),
                            "extra_pnginfo": {"workflow": copy.deepcopy(data)}}}


def import_ui_workflow(data: Any, registry: Registry) -> dict[str, Any] | None:
    """The v1 workflow of a UI-format document, or None when `data` is not one."""
    if not is_ui_workflow(data):
        return None
    data = copy.deepcopy(data)  # values (lists, dicts) must not be shared with the caller's
    return _Importer(data, registry).run(data)
