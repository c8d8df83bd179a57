"""ComfyUI's UI ("workflow") format read into plain records, whichever schema wrote it.

Schema 0.4 stores links as arrays `[id, origin, origin_slot, target, target_slot, type]`
and native reroutes under `extra`; schema 1 and subgraph definitions store link objects
with a `parentId` (the last reroute the link passes through). Reading both into one `Link`
record here keeps the rest of the importer free of format branches. Node ids become
strings, the way they appear in API prompts and in our workflow files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graph_runtime.workflow import WorkflowFormatError

# The ids a subgraph's links use for its own input and output boundary.
SUBGRAPH_INPUT = "-10"
SUBGRAPH_OUTPUT = "-20"


@dataclass(frozen=True)
class Link:
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: str
    parent: Any = None  # the native reroute the link passes through last, if any


@dataclass
class Graph:
    """One level of a UI workflow: the root graph or one subgraph definition."""

    nodes: dict[str, dict[str, Any]]
    links: dict[str, Link]
    groups: list[dict[str, Any]] = field(default_factory=list)
    key: str = ""  # the subgraph definition's id; "" for the root


def _slot(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WorkflowFormatError(f"a link slot must be a number, got {value!r}", where)
    return int(value)


def _link(item: Any, where: str, parents: dict[str, Any]) -> tuple[str, Link]:
    if isinstance(item, list) and len(item) >= 5:
        lid, origin, oslot, target, tslot = item[:5]
        ltype, parent = (item[5] if len(item) > 5 else ""), parents.get(str(item[0]))
    elif isinstance(item, dict) and "origin_id" in item and "target_id" in item:
        lid, origin, target = item.get("id"), item["origin_id"], item["target_id"]
        oslot, tslot = item.get("origin_slot", 0), item.get("target_slot", 0)
        ltype, parent = item.get("type", ""), item.get("parentId", parents.get(str(lid)))
    else:
        raise WorkflowFormatError("a link must be [id, origin, slot, target, slot, type] or "
                                  "an object with origin_id and target_id", where)
    link = Link(str(origin), _slot(oslot, where + ".origin_slot"), str(target),
                _slot(tslot, where + ".target_slot"), ltype if isinstance(ltype, str) else "",
                parent)
    return str(lid), link


def read_links(raw: Any, where: str, parents: dict[str, Any] | None = None) -> dict[str, Link]:
    """Links by id, from either stored form. `parents` maps a link id to its reroute for
    schema 0.4, which keeps that mapping apart (`extra.linkExtensions`)."""
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise WorkflowFormatError("\"links\" must be a list", where)
    links: dict[str, Link] = {}
    for i, item in enumerate(raw):
        if item is None:
            continue  # litegraph leaves holes where links were removed
        lid, link = _link(item, f"{where}[{i}]", parents or {})
        links[lid] = link
    return links


def read_nodes(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, list):
        raise WorkflowFormatError("\"nodes\" must be a list", where)
    nodes: dict[str, dict[str, Any]] = {}
    for i, node in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(node, dict):
            raise WorkflowFormatError("a node must be an object", at)
        if "id" not in node:
            raise WorkflowFormatError("a node needs an \"id\"", at)
        if not isinstance(node.get("type"), str) or not node["type"]:
            raise WorkflowFormatError(f"node {node['id']} has no \"type\"", at + ".type")
        for key in ("inputs", "outputs"):
            if node.get(key) is not None and not isinstance(node[key], list):
                raise WorkflowFormatError(f"\"{key}\" must be a list", f"{at}.{key}")
        nodes[str(node["id"])] = node
    return nodes


def _link_parents(data: dict[str, Any]) -> dict[str, Any]:
    extra = data.get("extra") if isinstance(data.get("extra"), dict) else {}
    out: dict[str, Any] = {}
    for item in extra.get("linkExtensions") or []:
        if isinstance(item, dict) and "id" in item and item.get("parentId") is not None:
            out[str(item["id"])] = item["parentId"]
    return out


def read_graph(data: dict[str, Any], where: str = "", key: str = "") -> Graph:
    """The nodes, links and groups of the root document or of one subgraph definition."""
    prefix = f"{where}." if where else ""
    groups = [g for g in data.get("groups") or [] if isinstance(g, dict)]
    return Graph(read_nodes(data.get("nodes"), prefix + "nodes"),
                 read_links(data.get("links"), prefix + "links", _link_parents(data)),
                 groups, key)


def subgraph_definitions(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every subgraph definition by its id, including ones stored inside definitions."""
    found: dict[str, dict[str, Any]] = {}
    pending = [data]
    while pending:
        doc = pending.pop()
        definitions = doc.get("definitions") if isinstance(doc.get("definitions"), dict) else {}
        for sub in definitions.get("subgraphs") or []:
            if isinstance(sub, dict) and isinstance(sub.get("id"), str) and sub["id"] not in found:
                found[sub["id"]] = sub
                pending.append(sub)
    return found


def xy(value: Any) -> list[float] | None:
    """A position or size as `[x, y]`; litegraph also wrote `{"0": x, "1": y}`."""
    if isinstance(value, dict):
        value = [value.get("0"), value.get("1")]
    if (isinstance(value, (list, tuple)) and len(value) >= 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value[:2])):
        return [value[0], value[1]]
    return None
