"""Where an input's value really comes from, once the front-end-only parts are gone.

ComfyUI's front end builds its API prompt by walking each link back past what the server
never sees: Reroute nodes pass their one input through; a muted node (mode 2) gives
nothing, so the input is left out; a bypassed node (mode 4) hands on one of its own inputs,
the one at the same slot if its type matches the consumer's, else the first input of that
type (the rule of its older web app); a PrimitiveNode gives its value as a literal;
subgraph boundaries lead into the instance's inner graph or out to the instance's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nodes.comfyui.importer.graph_model import SUBGRAPH_INPUT, SUBGRAPH_OUTPUT, Link
from nodes.comfyui.importer.subgraphs import Scope, Subgraphs

MUTED, BYPASSED = 2, 4
MAX_HOPS = 10_000  # more hops than any real graph has: a loop of reroutes


@dataclass(frozen=True)
class FromNode:
    scope: Scope
    node_id: str
    slot: int

    @property
    def full_id(self) -> str:
        return self.scope.full_id(self.node_id)


@dataclass(frozen=True)
class FromValue:
    value: Any


Source = FromNode | FromValue | None


def _bypassed_input(node: dict[str, Any], slot: int, want: str) -> dict[str, Any] | None:
    inputs = [i if isinstance(i, dict) else {} for i in node.get("inputs") or []]
    for index in [slot, *range(len(inputs))]:
        if 0 <= index < len(inputs) and inputs[index].get("type") == want:
            return inputs[index]
    return None


def _primitive_value(node: dict[str, Any]) -> Source:
    values = node.get("widgets_values")
    if isinstance(values, dict):
        values = list(values.values())
    return FromValue(values[0]) if isinstance(values, list) and values else None


class Resolver:
    def __init__(self, subgraphs: Subgraphs) -> None:
        self.subgraphs = subgraphs

    def _follow(self, scope: Scope, entry: dict[str, Any] | None) -> Link | None:
        if entry is None or entry.get("link") is None:
            return None
        return scope.graph.links.get(str(entry["link"]))

    def resolve(self, scope: Scope, link: Link, want: str) -> Source:
        """The real source of `link` (into an input of type `want`), or None when the
        input ends up unconnected."""
        origin, slot = link.origin, link.origin_slot
        for _ in range(MAX_HOPS):
            nxt: Link | None
            if origin == SUBGRAPH_INPUT:
                if scope.parent is None:
                    return None
                nxt = self._follow(scope.parent, self.subgraphs.input_entry(scope, slot))
                scope = scope.parent
            else:
                node = scope.graph.nodes.get(origin)
                if node is None:
                    return FromNode(scope, origin, slot)  # dangling: validation says so
                mode, kind = node.get("mode", 0), node.get("type")
                if mode == MUTED:
                    return None
                if mode == BYPASSED:
                    nxt = self._follow(scope, _bypassed_input(node, slot, want))
                elif kind == "Reroute":
                    inputs = node.get("inputs") or [None]
                    nxt = self._follow(scope, inputs[0] if isinstance(inputs[0], dict) else None)
                elif kind == "PrimitiveNode":
                    return _primitive_value(node)
                elif self.subgraphs.is_instance(node):
                    scope = self.subgraphs.child(scope, origin)
                    nxt = next((lk for lk in scope.graph.links.values()
                                if lk.target == SUBGRAPH_OUTPUT and lk.target_slot == slot), None)
                else:
                    return FromNode(scope, origin, slot)
            if nxt is None:
                return None
            origin, slot = nxt.origin, nxt.origin_slot
        return None
