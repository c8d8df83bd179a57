"""Subgraphs flattened: each instance's inner nodes become nodes of one flat graph.

Inner nodes get the ids ComfyUI's front end gives them when it runs a subgraph,
`"<instance id>:<inner id>"` (nested: `"65:70:63"`), so ids in its reports and ours agree.
A scope is one graph level as seen from the root: the graph, the id prefix of its nodes,
the instance that holds it and where its nodes land on the canvas (the inner layout is
moved so its top-left corner sits at the instance's position).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from graph_runtime.workflow import WorkflowFormatError
from nodes.comfyui.importer.graph_model import Graph, read_graph, xy

MAX_DEPTH = 32


@dataclass
class Scope:
    graph: Graph
    prefix: str = ""
    parent: Scope | None = None
    instance: dict[str, Any] | None = None
    offset: tuple[float, float] = (0.0, 0.0)
    children: dict[str, Scope] = field(default_factory=dict)

    def full_id(self, node_id: str) -> str:
        return self.prefix + node_id

    def keys(self) -> Iterator[str]:
        """The definition ids of this scope and of the scopes around it."""
        scope: Scope | None = self
        while scope is not None:
            yield scope.graph.key
            scope = scope.parent

    def place(self, pos: Any) -> list[float] | None:
        """A position inside this scope, on the flat canvas."""
        point = xy(pos)
        if point is None or self.parent is None:
            return point
        return [point[0] + self.offset[0], point[1] + self.offset[1]]


class Subgraphs:
    """The definitions of one document, and the scopes of their instances."""

    def __init__(self, definitions: dict[str, dict[str, Any]]) -> None:
        self.definitions = definitions
        self._graphs: dict[str, Graph] = {}

    def is_instance(self, node: dict[str, Any]) -> bool:
        return node.get("type") in self.definitions

    def graph(self, key: str) -> Graph:
        if key not in self._graphs:
            self._graphs[key] = read_graph(self.definitions[key], f"subgraph {key}", key)
        return self._graphs[key]

    def child(self, scope: Scope, node_id: str) -> Scope:
        """The scope inside instance `node_id` of `scope` (made once, then reused)."""
        if node_id in scope.children:
            return scope.children[node_id]
        instance = scope.graph.nodes[node_id]
        key = instance["type"]
        depth = len(scope.prefix.split(":")) if scope.prefix else 0
        if key in scope.keys() or depth >= MAX_DEPTH:
            raise WorkflowFormatError(f"subgraph {key} contains itself",
                                      f"node {scope.full_id(node_id)}")
        graph = self.graph(key)
        at = scope.place(instance.get("pos")) or [0.0, 0.0]
        corners = [p for p in (xy(n.get("pos")) for n in graph.nodes.values()) if p]
        left = min((p[0] for p in corners), default=0.0)
        top = min((p[1] for p in corners), default=0.0)
        child = Scope(graph, f"{scope.full_id(node_id)}:", scope, instance,
                      (at[0] - left, at[1] - top))
        scope.children[node_id] = child
        return child

    def input_entry(self, scope: Scope, slot: int) -> dict[str, Any] | None:
        """The instance's input socket that feeds the subgraph's input `slot`: found by the
        subgraph input's name, else by position."""
        if scope.instance is None:
            return None
        entries = [e for e in scope.instance.get("inputs") or [] if isinstance(e, dict)]
        declared = self.definitions[scope.graph.key].get("inputs") or []
        if 0 <= slot < len(declared) and isinstance(declared[slot], dict):
            name = declared[slot].get("name")
            for entry in entries:
                if name is not None and entry.get("name") == name:
                    return entry
        return entries[slot] if 0 <= slot < len(entries) else None
