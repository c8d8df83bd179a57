"""Engine test helpers: a private registry of tiny nodes, and a workflow builder."""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from graph_runtime import Choice, Float, Int, Registry, Text, node
from graph_runtime.context import current
from graph_runtime.workflow import Workflow, load_workflow


class Pair(NamedTuple):
    low: int
    high: int


def make_registry() -> Registry:
    reg = Registry()

    @node("Const", output="value", registry=reg)
    def const(value: Annotated[int, Int(min=-100, max=100)] = 1) -> int:
        return value

    @node("Add", output="sum", registry=reg)
    def add(a: int, b: Annotated[int, Int()] = 0) -> int:
        return a + b

    @node("Scale", output="value", registry=reg)
    def scale(x: float, factor: Annotated[float, Float(min=0.0, max=10.0)] = 2.0) -> float:
        return x * factor

    @node("Split", registry=reg)
    def split(x: int) -> Pair:
        return Pair(x - 1, x + 1)

    @node("Label", output="text", registry=reg)
    def label(x: int, mode: Annotated[str, Choice(["plain", "loud"])] = "plain",
              suffix: Annotated[str, Text()] = "") -> str:
        text = f"n={x}{suffix}"
        return text.upper() if mode == "loud" else text

    @node("Sink", output_node=True, registry=reg)
    def sink(value: int, note: str | None = None) -> None:
        ctx = current()
        assert ctx is not None
        ctx.ui["value"] = [value]

    @node("TextSink", output_node=True, registry=reg)
    def text_sink(text: str) -> None:
        ctx = current()
        assert ctx is not None
        ctx.ui["text"] = [text]

    @node("WriteFile", output_node=True, registry=reg)
    def write_file(value: int, name: Annotated[str, Text()] = "out") -> None:
        ctx = current()
        assert ctx is not None
        path = ctx.output_dir / f"{name}.txt"
        path.write_text(str(value))
        ctx.add_file(path)

    @node("Boom", output="value", registry=reg)
    def boom(x: int) -> int:
        raise ValueError(f"boom at {x}")

    @node("Steps", output="value", registry=reg)
    def steps(x: int, total: Annotated[int, Int(min=1, max=100)] = 3) -> int:
        ctx = current()
        assert ctx is not None
        for i in range(1, total + 1):
            ctx.progress(i, total)
        return x + total

    return reg


def link(src: str, output: str) -> dict[str, str]:
    return {"from": src, "output": output}


def wf(nodes: dict[str, tuple[str, dict[str, Any]]], **top: Any) -> Workflow:
    """Build a workflow from {id: (type, inputs)}."""
    data = {"format": "noodle.workflow", "version": 1,
            "nodes": {nid: {"type": t, "inputs": dict(i)} for nid, (t, i) in nodes.items()}}
    data.update(top)
    return load_workflow(data)
