"""Workflow -> networkx.DiGraph, validation with structured errors, and planning.

Validation checks the whole workflow before anything runs and returns *every* problem as
`{"node", "input", "code", "message"}`, so a front end can mark all broken sockets at once
(ComfyUI finds some problems only at run time, and silently drops outputs that fail).
Codes: unknown_node_type, unknown_input, missing_input, dangling_link, unknown_output,
type_mismatch, invalid_value_type, value_out_of_range, invalid_choice, cycle, no_outputs,
unknown_target, absent_output (a node's `absent_outputs` hook says that output will be
empty for these inputs) (plus unknown_node / invalid_override from command-line overrides).

Planning keeps only the ancestors of the output nodes (or of explicit targets) and orders
them topologically, ties broken by node id in natural order ("2" before "10"), so the same
workflow always runs in the same order.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

import networkx as nx

from graph_runtime.nodes import InputSpec, NodeDef, Registry, types_compatible
from graph_runtime.workflow import Workflow, is_link

_PRIMITIVE_CHECKS = {
    "INT": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "FLOAT": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "STRING": lambda v: isinstance(v, str),
    "BOOLEAN": lambda v: isinstance(v, bool),
}


def natural_key(node_id: str) -> tuple[int, int, str]:
    """Numeric ids by value, then the others by text: a stable, human order."""
    if node_id.isdigit():
        return (0, int(node_id), node_id)
    return (1, 0, node_id)


def _error(node: str | None, input_name: str | None, code: str, message: str) -> dict[str, Any]:
    return {"node": node, "input": input_name, "code": code, "message": message}


def build_graph(wf: Workflow, registry: Registry | None = None) -> nx.DiGraph:
    """One graph node per workflow node (attributes `type`, `output_node`); one edge per
    linked pair, whose `links` attribute lists `(output_name, input_name)` pairs.
    Links to missing nodes are left out (validation reports them)."""
    g = nx.DiGraph()
    nodes = wf.nodes
    for nid, nd in nodes.items():
        ntype = nd.get("type")
        definition = registry.get(ntype) if registry is not None else None
        g.add_node(nid, type=ntype,
                   output_node=bool(definition is not None and definition.output_node))
    succ = g._succ  # direct adjacency access keeps building 1,000 nodes well under a ms
    for nid, nd in nodes.items():
        for iname, value in (nd.get("inputs") or {}).items():
            if type(value) is dict and "from" in value:
                src = value["from"]
                if src not in nodes:
                    continue
                data = succ[src].get(nid)
                if data is None:
                    g.add_edge(src, nid, links=[(value.get("output"), iname)])
                else:
                    data["links"].append((value.get("output"), iname))
    return g


def _check_literal(nid: str, spec: InputSpec, value: Any, errors: list[dict[str, Any]]) -> None:
    if spec.widget is not None:
        problem = spec.widget.check(value)
        if problem is not None:
            errors.append(_error(nid, spec.name, problem[0], f"{spec.name}: {problem[1]}"))
        return
    if value is None and spec.optional:
        return
    check = _PRIMITIVE_CHECKS.get(spec.type)
    if check is None:
        errors.append(_error(nid, spec.name, "invalid_value_type",
                             f"{spec.name} takes a {spec.type} from another node's output; "
                             f"got the literal {value!r}"))
    elif not check(value):
        errors.append(_error(nid, spec.name, "invalid_value_type",
                             f"{spec.name}: expected {spec.type}, got {value!r}"))


def _absent_outputs(definition: NodeDef, nd: dict[str, Any]) -> dict[str, str]:
    """Outputs a node declares but will not produce for its literal inputs, with reasons,
    from the node's optional `extra["absent_outputs"](literals)` hook — e.g. a pipeline
    loader whose source has no VAE. Lets linking such an output fail validation, not a run."""
    hook = definition.extra.get("absent_outputs")
    if hook is None:
        return {}
    given = nd.get("inputs") or {}
    literals = {}
    for name, spec in definition.inputs.items():
        value = given.get(name, spec.widget.default if spec.widget is not None else None)
        if value is not None and not is_link(value):
            literals[name] = value
    try:
        return dict(hook(literals))
    except Exception:  # noqa: BLE001 - a failing hook must not break validation
        return {}


def _check_node(wf: Workflow, registry: Registry, nid: str, nd: dict[str, Any],
                errors: list[dict[str, Any]]) -> None:
    ntype = nd.get("type")
    definition: NodeDef | None = registry.get(ntype)
    inputs = nd.get("inputs") or {}
    if definition is None:
        errors.append(_error(nid, None, "unknown_node_type", f"unknown node type {ntype!r}"))
    for iname, value in inputs.items():
        spec = definition.inputs.get(iname) if definition is not None else None
        if definition is not None and spec is None:
            errors.append(_error(nid, iname, "unknown_input",
                                 f"{ntype} has no input {iname!r}"))
            continue
        if is_link(value):
            src_id = value["from"]
            src = wf.nodes.get(src_id)
            if src is None:
                errors.append(_error(nid, iname, "dangling_link",
                                     f"{iname} is linked from node {src_id!r}, which does "
                                     "not exist"))
                continue
            src_def = registry.get(src.get("type"))
            if src_def is None:
                continue
            out_name = value.get("output")
            out = next((o for o in src_def.outputs if o.name == out_name), None)
            if out is None:
                names = ", ".join(o.name for o in src_def.outputs) or "none"
                errors.append(_error(nid, iname, "unknown_output",
                                     f"{iname}: node {src_id!r} ({src_def.name}) has no "
                                     f"output {out_name!r} (outputs: {names})"))
            elif spec is not None and not types_compatible(out.type, spec.type):
                errors.append(_error(nid, iname, "type_mismatch",
                                     f"{iname} expects {spec.type} but {src_def.name}."
                                     f"{out_name} gives {out.type}"))
            elif out_name in (absent := _absent_outputs(src_def, src)):
                errors.append(_error(nid, iname, "absent_output",
                                     f"{iname}: node {src_id!r} ({src_def.name}) gives no "
                                     f"{out_name}: {absent[out_name]}"))
        elif spec is not None:
            _check_literal(nid, spec, value, errors)
    if definition is not None:
        for spec in definition.inputs.values():
            if spec.required and spec.name not in inputs:
                how = "a value or a link" if spec.type in _PRIMITIVE_CHECKS else "a link"
                errors.append(_error(nid, spec.name, "missing_input",
                                     f"{spec.name} ({spec.type}) needs {how}"))


def _predecessors(wf: Workflow) -> dict[str, list[str]]:
    """Linked predecessors per node (existing nodes only), in input order."""
    nodes = wf.nodes
    preds: dict[str, list[str]] = {}
    for nid, nd in nodes.items():
        lst: list[str] = []
        for value in (nd.get("inputs") or {}).values():
            if type(value) is dict and "from" in value and value["from"] in nodes:
                lst.append(value["from"])
        preds[nid] = lst
    return preds


def topological_order(preds: dict[str, Iterable[str]], subset: Iterable[str] | None = None
                      ) -> tuple[list[str], list[str]]:
    """Kahn's algorithm with a natural-order heap. Returns `(order, left_over)`; nodes left
    over are on or behind a cycle."""
    members = set(preds if subset is None else subset)
    indegree: dict[str, int] = dict.fromkeys(members, 0)
    succ: dict[str, list[str]] = {n: [] for n in members}
    for n in members:
        for p in set(preds[n]):
            if p in members:
                indegree[n] += 1
                succ[p].append(n)
    heap = [(natural_key(n), n) for n, d in indegree.items() if d == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, n = heapq.heappop(heap)
        order.append(n)
        for s in succ[n]:
            indegree[s] -= 1
            if indegree[s] == 0:
                heapq.heappush(heap, (natural_key(s), s))
    left = sorted((n for n, d in indegree.items() if d > 0), key=natural_key)
    return order, left


def _cycle_errors(preds: dict[str, list[str]], left: list[str]) -> list[dict[str, Any]]:
    g = nx.DiGraph()
    g.add_nodes_from(left)
    g.add_edges_from((p, n) for n in left for p in preds[n] if p in g)
    errors = []
    for comp in nx.strongly_connected_components(g):
        if len(comp) == 1:
            (only,) = comp
            if not g.has_edge(only, only):
                continue
        members = sorted(comp, key=natural_key)
        errors.append(_error(members[0], None, "cycle",
                             "these nodes form a cycle: " + " -> ".join(members)))
    errors.sort(key=lambda e: natural_key(e["node"]))
    return errors


def output_nodes(wf: Workflow, registry: Registry) -> list[str]:
    out = []
    for nid, nd in wf.nodes.items():
        definition = registry.get(nd.get("type"))
        if definition is not None and definition.output_node:
            out.append(nid)
    return out


def validate(wf: Workflow, registry: Registry, targets: Iterable[str] | None = None
             ) -> list[dict[str, Any]]:
    """Every problem in the workflow, or an empty list when it can run."""
    errors: list[dict[str, Any]] = []
    for nid, nd in wf.nodes.items():
        _check_node(wf, registry, nid, nd, errors)
    preds = _predecessors(wf)
    _, left = topological_order(preds)
    if left:
        errors.extend(_cycle_errors(preds, left))
    if targets is not None:
        targets = list(targets)
        for t in targets:
            if t not in wf.nodes:
                errors.append(_error(t, None, "unknown_target",
                                     f"target {t!r} is not a node of this workflow"))
    if not targets and not output_nodes(wf, registry):
        errors.append(_error(None, None, "no_outputs",
                             "the workflow has no output node (e.g. a save or preview node)"))
    return errors


def plan(g: nx.DiGraph, roots: Iterable[str]) -> list[str]:
    """The roots and all their ancestors in a deterministic topological order."""
    pred = g._pred
    needed: set[str] = set()
    stack = [r for r in roots if r in pred]
    while stack:
        n = stack.pop()
        if n in needed:
            continue
        needed.add(n)
        stack.extend(p for p in pred[n] if p not in needed)
    order, left = topological_order({n: pred[n] for n in needed}, needed)
    if left:
        raise ValueError("cannot plan a graph with a cycle: " + ", ".join(left))
    return order
