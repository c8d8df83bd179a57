"""Bypassed and muted nodes: the workflow is rewritten without them before validation.

A *bypassed* node is taken out and each of its consumers is linked instead to the node's
first linked input of the same socket type as the output it used (through chains of
bypassed nodes); with no such input the consumer's input is left unlinked, so validation
names it as missing (or it takes its default). A *muted* node is taken out together with
every node that takes a link from a removed node: what only the muted node feeds cannot
run. Doing this as a rewrite keeps validation, planning and caching unaware of modes.
"""

from __future__ import annotations

from typing import Any

from graph_runtime.registry import Registry
from graph_runtime.workflow import Workflow, is_link

BYPASS, MUTE = "bypass", "mute"


def _output_type(registry: Registry, node: dict[str, Any] | None, output: Any) -> str | None:
    """The socket type of a node's named output, when the registry knows the node."""
    definition = registry.get(node.get("type")) if node is not None else None
    if definition is None:
        return None
    return next((o.type for o in definition.outputs if o.name == output), None)


def _input_type(wf: Workflow, registry: Registry, node: dict[str, Any], name: str,
                link: dict[str, Any]) -> str | None:
    """An input's socket type: from the node's definition, else from what feeds it (a node
    of an unknown type can still be passed through by matching its links' types)."""
    definition = registry.get(node.get("type"))
    spec = definition.inputs.get(name) if definition is not None else None
    if spec is not None:
        return spec.type
    return _output_type(registry, wf.nodes.get(link["from"]), link.get("output"))


def _input_order(registry: Registry, node: dict[str, Any]) -> list[str]:
    """The node's inputs in declaration order (file order for unknown types or names)."""
    inputs = node.get("inputs") or {}
    definition = registry.get(node.get("type"))
    declared = [n for n in definition.inputs if n in inputs] if definition is not None else []
    return declared + [n for n in inputs if n not in declared]


def _pass_through(wf: Workflow, registry: Registry, nid: str, wanted: str | None,
                  seen: frozenset[str]) -> dict[str, Any] | None:
    """The link that replaces a link from bypassed node `nid`, or None to unlink."""
    node = wf.nodes[nid]
    if wanted is None or nid in seen:
        return None
    inputs = node.get("inputs") or {}
    for name in _input_order(registry, node):
        link = inputs[name]
        if not is_link(link) or _input_type(wf, registry, node, name, link) != wanted:
            continue
        source = wf.nodes.get(link["from"])
        if source is not None and source.get("mode") == BYPASS:
            return _pass_through(wf, registry, link["from"], wanted, seen | {nid})
        return dict(link)
    return None


def _removed_by_mute(wf: Workflow) -> set[str]:
    """Muted nodes and, transitively, every node with a link from one of them."""
    removed = {nid for nid, nd in wf.nodes.items() if nd.get("mode") == MUTE}
    changed = bool(removed)
    while changed:
        changed = False
        for nid, nd in wf.nodes.items():
            if nid not in removed and any(is_link(v) and v["from"] in removed
                                          for v in (nd.get("inputs") or {}).values()):
                removed.add(nid)
                changed = True
    return removed


def has_modes(wf: Workflow) -> bool:
    """Whether any node is bypassed or muted (nothing to rewrite otherwise)."""
    return any("mode" in nd for nd in wf.nodes.values())


def apply_modes(wf: Workflow, registry: Registry) -> Workflow:
    """`wf` with bypassed and muted nodes resolved away; `wf` itself when there are none.
    The result is a copy: the caller's workflow keeps its modes."""
    if not has_modes(wf):
        return wf
    out = wf.copy()
    for nd in out.nodes.values():
        if nd.get("mode") == BYPASS:
            continue
        inputs = nd["inputs"]
        for name, value in list(inputs.items()):
            source = wf.nodes.get(value["from"]) if is_link(value) else None
            if source is None or source.get("mode") != BYPASS:
                continue
            wanted = _output_type(registry, source, value.get("output"))
            if wanted is None:
                wanted = _input_type(wf, registry, nd, name, {"from": "", "output": None})
            replacement = _pass_through(wf, registry, value["from"], wanted, frozenset())
            if replacement is None:
                del inputs[name]
            else:
                inputs[name] = replacement
    out.nodes = {nid: nd for nid, nd in out.nodes.items() if nd.get("mode") != BYPASS}
    removed = _removed_by_mute(out)
    out.nodes = {nid: nd for nid, nd in out.nodes.items() if nid not in removed}
    return out
