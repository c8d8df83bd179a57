"""Workflow -> networkx.DiGraph, validation with structured errors, and planning.

Validation checks the whole workflow before anything runs and returns *every* problem as
`{"node", "input", "code", "message"}`, so a front end can mark all broken sockets at once
(ComfyUI finds some problems only at run time, and silently drops outputs that fail).
Codes: unknown_node_type, unknown_input, missing_input, dangling_link, unknown_output,
type_mismatch, invalid_value_type, value_out_of_range, value_too_long, invalid_choice, cycle,
no_outputs, unknown_target, absent_output (a node's `absent_outputs` hook says that output
will be empty for these inputs), invalid_combination (its `check_inputs` hook refuses
values that are each in range but cannot run together) (plus unknown_node /
invalid_override from command-line overrides).
Which socket types may be linked is the registry's knowledge (`Registry.accepts`), so the
engine holds no list of its own.

Planning keeps only the ancestors of the output nodes (or of explicit targets) and orders
them topologically, ties broken by node id in natural order ("2" before "10"), so the same
workflow always runs in the same order.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import networkx as nx

from graph_runtime.modes import apply_modes, has_modes
from graph_runtime.registry import InputSpec, NodeDef, Registry
from graph_runtime.settings import Folders
from graph_runtime.widgets import is_finite_number, is_float_value, shown
from graph_runtime.workflow import Workflow, is_link

_PRIMITIVE_CHECKS = {
    "INT": lambda v: is_finite_number(v) and isinstance(v, int),
    "FLOAT": is_float_value,
    "STRING": lambda v: isinstance(v, str),
    "BOOLEAN": lambda v: isinstance(v, bool),
}


def natural_key(node_id: str) -> tuple[int, int, str]:
    """Numeric ids by value, then the others by text: a stable, human order. Only ASCII
    digits count: `int()` refuses "²", which `str.isdigit` calls a digit."""
    if node_id.isascii() and node_id.isdigit():
        return (0, int(node_id), node_id)
    return (1, 0, node_id)


def call_check(hook: Callable[..., Mapping[str, str]], literals: dict[str, Any],
               folders: Folders) -> Mapping[str, str]:
    """A node's `check_inputs` hook, given the folders when it declares a second
    parameter."""
    try:
        takes_folders = len(inspect.signature(hook).parameters) >= 2
    except (TypeError, ValueError):
        takes_folders = False
    return hook(literals, folders) if takes_folders else hook(literals)


def _error(node: str | None, input_name: str | None, code: str, message: str) -> dict[str, Any]:
    return {"node": node, "input": input_name, "code": code, "message": message}


def build_graph(wf: Workflow, registry: Registry | None = None) -> nx.DiGraph:
    """One graph node per workflow node (attributes `type`, `output_node`); one edge per
    linked pair, whose `links` attribute lists `(output_name, input_name)` pairs.
    Links to missing nodes are left out (validation reports them)."""
    g = nx.DiGraph()
    nodes = wf.nodes
    links: dict[tuple[str, str], list[tuple[str | None, str]]] = {}
    for nid, nd in nodes.items():
        definition = registry.get(nd.get("type")) if registry is not None else None
        g.add_node(nid, type=nd.get("type"),
                   output_node=bool(definition is not None and definition.output_node))
        for iname, value in (nd.get("inputs") or {}).items():
            if is_link(value) and value["from"] in nodes:
                links.setdefault((value["from"], nid), []).append((value.get("output"), iname))
    g.add_edges_from((src, dst, {"links": pairs}) for (src, dst), pairs in links.items())
    return g


def _check_literal(nid: str, spec: InputSpec, value: Any, folders: Folders,
                   errors: list[dict[str, Any]]) -> None:
    if spec.widget is not None:
        problem = spec.widget.check(value, folders)
        if problem is not None:
            errors.append(_error(nid, spec.name, problem[0], f"{spec.name}: {problem[1]}"))
        return
    if value is None and spec.optional:
        return
    check = _PRIMITIVE_CHECKS.get(spec.type)
    if check is None:
        errors.append(_error(nid, spec.name, "invalid_value_type",
                             f"{spec.name} takes a {spec.type} from another node's output; "
                             f"got the literal {shown(value)}"))
    elif not check(value):
        errors.append(_error(nid, spec.name, "invalid_value_type",
                             f"{spec.name}: expected {spec.type}, got {shown(value)}"))


def _absent_outputs(definition: NodeDef, nd: dict[str, Any], folders: Folders
                    ) -> dict[str, str]:
    """Outputs a node declares but will not produce for its literal inputs, with reasons,
    from the node's optional `absent_outputs(literals, folders)` hook — e.g. a loader whose
    source lacks a component. Lets linking such an output fail validation, not a run."""
    hook = definition.absent_outputs
    if hook is None:
        return {}
    given = nd.get("inputs") or {}
    literals = {}
    for name, spec in definition.inputs.items():
        value = given.get(name, spec.default)
        if value is not None and not is_link(value):
            literals[name] = value
    try:
        return dict(hook(literals, folders))
    except Exception:  # noqa: BLE001 - a failing hook must not break validation
        return {}


class _NodeChecker:
    """Checks one workflow node's inputs against its definition."""

    def __init__(self, wf: Workflow, registry: Registry, folders: Folders,
                 errors: list[dict[str, Any]]) -> None:
        self.wf, self.registry, self.folders, self.errors = wf, registry, folders, errors
        # Per source node: its hook may read files, and many links leave one loader.
        self.absent: dict[str, dict[str, str]] = {}

    def check(self, nid: str, nd: dict[str, Any]) -> None:
        before = len(self.errors)
        ntype = nd.get("type")
        definition: NodeDef | None = self.registry.get(ntype)
        inputs = nd.get("inputs") or {}
        if definition is None:
            self.errors.append(_error(nid, None, "unknown_node_type",
                                      f"unknown node type {shown(ntype)}"))
        for iname, value in inputs.items():
            spec = definition.inputs.get(iname) if definition is not None else None
            if definition is not None and spec is None:
                self.errors.append(_error(nid, iname, "unknown_input",
                                          f"{ntype} has no input {shown(iname)}"))
            elif is_link(value):
                self.link(nid, iname, value, spec)
            elif spec is not None:
                _check_literal(nid, spec, value, self.folders, self.errors)
        if definition is not None:
            for spec in definition.inputs.values():
                if spec.required and spec.name not in inputs:
                    how = "a value or a link" if spec.type in _PRIMITIVE_CHECKS else "a link"
                    self.errors.append(_error(nid, spec.name, "missing_input",
                                              f"{spec.name} ({spec.type}) needs {how}"))
            if definition.check_inputs is not None:
                refused = {e["input"] for e in self.errors[before:]}
                self.combination(nid, definition, inputs, refused)

    def combination(self, nid: str, definition: NodeDef, inputs: dict[str, Any],
                    refused: set[str | None]) -> None:
        """The node's own check of how its literal values go together; values their widget
        refused are left out (reported already), as are linked ones."""
        if None in refused:  # the node as a whole is wrong
            return
        literals = {name: inputs.get(name, spec.default)
                    for name, spec in definition.inputs.items()
                    if spec.widget is not None and name not in refused
                    and not is_link(inputs.get(name))}
        assert definition.check_inputs is not None
        try:
            problems = dict(call_check(definition.check_inputs, literals, self.folders))
        except Exception as exc:  # noqa: BLE001 - a broken hook is reported, not raised
            problems = {"": f"cannot check the inputs: {type(exc).__name__}: {exc}"}
        for name, message in problems.items():
            self.errors.append(_error(nid, name or None, "invalid_combination",
                                      f"{name}: {message}" if name else message))

    def absent_outputs(self, src_id: str, src_def: NodeDef, src: dict[str, Any]
                       ) -> dict[str, str]:
        if src_id not in self.absent:
            self.absent[src_id] = _absent_outputs(src_def, src, self.folders)
        return self.absent[src_id]

    def link(self, nid: str, iname: str, value: dict[str, Any], spec: InputSpec | None) -> None:
        src_id, out_name = value["from"], value.get("output")
        src = self.wf.nodes.get(src_id)
        if src is None:
            self.errors.append(_error(nid, iname, "dangling_link",
                                      f"{iname} is linked from node {shown(src_id)}, which does "
                                      "not exist"))
            return
        src_def = self.registry.get(src.get("type"))
        if src_def is None:
            return
        out = next((o for o in src_def.outputs if o.name == out_name), None)
        if out is None:
            names = ", ".join(o.name for o in src_def.outputs) or "none"
            self.errors.append(_error(nid, iname, "unknown_output",
                                      f"{iname}: node {shown(src_id)} ({src_def.name}) has no "
                                      f"output {shown(out_name)} (outputs: {names})"))
        elif spec is not None and not self.registry.accepts(spec.type, out.type):
            self.errors.append(_error(nid, iname, "type_mismatch",
                                      f"{iname} expects {spec.type} but {src_def.name}."
                                      f"{out_name} gives {out.type}"))
        elif out_name in (absent := self.absent_outputs(src_id, src_def, src)):
            self.errors.append(_error(nid, iname, "absent_output",
                                      f"{iname}: node {shown(src_id)} ({src_def.name}) gives no "
                                      f"{out_name}: {absent[out_name]}"))


def _cycle_errors(g: nx.DiGraph) -> list[dict[str, Any]]:
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


def validate(wf: Workflow, registry: Registry, targets: Iterable[str] | None = None,
             folders: Folders | None = None, graph: nx.DiGraph | None = None
             ) -> list[dict[str, Any]]:
    """Every problem in the workflow, or an empty list when it can run. `folders` are
    those choices and hooks that read folders see; `graph` saves building it again.
    Bypassed and muted nodes are resolved first (`modes.apply_modes`)."""
    if has_modes(wf):
        wf, graph = apply_modes(wf, registry), None
    errors: list[dict[str, Any]] = []
    checker = _NodeChecker(wf, registry, folders or Folders.from_env(), errors)
    for nid, nd in wf.nodes.items():
        checker.check(nid, nd)
    g = graph if graph is not None else build_graph(wf)
    if not nx.is_directed_acyclic_graph(g):
        errors.extend(_cycle_errors(g))
    if targets is not None:
        targets = list(targets)
        for t in targets:
            if t not in wf.nodes:
                errors.append(_error(t, None, "unknown_target",
                                     f"target {shown(t)} is not a node of this workflow"))
    if not targets and not output_nodes(wf, registry):
        errors.append(_error(None, None, "no_outputs",
                             "the workflow has no output node (e.g. a save or preview node)"))
    return errors


def plan(g: nx.DiGraph, roots: Iterable[str]) -> list[str]:
    """The roots and all their ancestors in a deterministic topological order, ties broken
    by natural node id order.

    The whole graph is sorted and the plan kept from it: since the plan holds every
    ancestor of its members, nodes outside it never gate a node inside, so this is the
    order sorting the plan alone would give, several times faster than a subgraph view.
    """
    needed: set[str] = set()
    for root in roots:
        if root in g and root not in needed:  # a root behind another is already in
            needed.add(root)
            needed |= nx.ancestors(g, root)
    try:
        ordered = nx.lexicographical_topological_sort(g, key=natural_key)
        return [n for n in ordered if n in needed]
    except nx.NetworkXUnfeasible as exc:
        raise ValueError("cannot plan a graph with a cycle") from exc
