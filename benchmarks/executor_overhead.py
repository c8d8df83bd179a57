"""Executor overhead on 1,000 trivial nodes: a chain and a fan-in (a binary reduction tree).

Prints validation and planning time and microseconds per node for a cold run (empty cache)
and a cached run (everything reused), next to a reference measured in the same run: the
same Python functions called directly in a plain loop, i.e. the work with no engine.
Targets: <= 50 us per node cold, <= 100 ms to validate 1,000 nodes.

    .venv/bin/python benchmarks/executor_overhead.py [--nodes 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Annotated, Any

from graph_runtime import Int, Registry, node
from graph_runtime.context import current
from graph_runtime.executor import Executor
from graph_runtime.graph import build_graph, output_nodes, plan, validate
from graph_runtime.workflow import Workflow, load_workflow

REG = Registry()


@node("Const", output="value", registry=REG)
def const(value: Annotated[int, Int()] = 0) -> int:
    return value


@node("Add", output="value", registry=REG)
def add(a: int, b: Annotated[int, Int()] = 1) -> int:
    return a + b


@node("Show", output_node=True, registry=REG)
def show(value: int) -> None:
    ctx = current()
    if ctx is not None:
        ctx.ui["value"] = [value]


def _link(src: str) -> dict[str, str]:
    return {"from": src, "output": "value"}


def chain(n: int) -> Workflow:
    nodes: dict[str, Any] = {"0": {"type": "Const", "inputs": {"value": 1}}}
    for i in range(1, n - 1):
        nodes[str(i)] = {"type": "Add", "inputs": {"a": _link(str(i - 1)), "b": 1}}
    nodes[str(n - 1)] = {"type": "Show", "inputs": {"value": _link(str(n - 2))}}
    return load_workflow({"format": "noodle.workflow", "version": 1, "nodes": nodes})


def fan_in(n: int) -> Workflow:
    """n/2 constants summed pairwise down to one value, then shown: n nodes in all."""
    nodes: dict[str, Any] = {}
    layer = []
    for i in range(n // 2):
        nodes[str(i)] = {"type": "Const", "inputs": {"value": i}}
        layer.append(str(i))
    next_id = n // 2
    while len(layer) > 1:
        merged = []
        for a, b in zip(layer[::2], layer[1::2], strict=False):
            nodes[str(next_id)] = {"type": "Add", "inputs": {"a": _link(a), "b": _link(b)}}
            merged.append(str(next_id))
            next_id += 1
        if len(layer) % 2:
            merged.append(layer[-1])
        layer = merged
    nodes[str(next_id)] = {"type": "Show", "inputs": {"value": _link(layer[0])}}
    return load_workflow({"format": "noodle.workflow", "version": 1, "nodes": nodes})


def reference(wf: Workflow) -> None:
    """The same functions called directly, in an order computed beforehand."""
    funcs: dict[str, Callable[..., Any]] = {"Const": const, "Add": add, "Show": show}
    values: dict[str, Any] = {}
    for nid, nd in wf.nodes.items():  # ids are created in dependency order
        kwargs = {k: (values[v["from"]] if isinstance(v, dict) else v)
                  for k, v in nd["inputs"].items()}
        values[nid] = funcs[nd["type"]](**kwargs)


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure_case(name: str, wf: Workflow, repeat: int, out_dir: Path) -> dict[str, float]:
    n = len(wf.nodes)
    t_validate = best(lambda: validate(wf, REG), repeat)

    def planning() -> None:
        g = build_graph(wf, REG)
        plan(g, output_nodes(wf, REG))

    t_plan = best(planning, repeat)
    colds, cacheds = [], []
    for _ in range(repeat):
        ex = Executor(REG)
        t0 = time.perf_counter()
        cold = ex.run(wf, output_dir=out_dir)
        colds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        warm = ex.run(wf, output_dir=out_dir)
        cacheds.append(time.perf_counter() - t0)
        assert cold.ok and len(cold.executed) == n and warm.executed == []
    t_ref = best(lambda: reference(wf), repeat)
    t_cold, t_cached = min(colds), min(cacheds)
    row = {"validate_ms": t_validate * 1e3, "plan_ms": t_plan * 1e3,
           "cold_us_per_node": t_cold / n * 1e6, "cached_us_per_node": t_cached / n * 1e6,
           "reference_us_per_node": t_ref / n * 1e6,
           "cold_median_us_per_node": statistics.median(colds) / n * 1e6}
    verdict_cold = "ok" if row["cold_us_per_node"] <= 50 else "OVER TARGET"
    verdict_val = "ok" if row["validate_ms"] <= 100 else "OVER TARGET"
    print(f"{name} ({n} nodes)")
    print(f"  validate           {row['validate_ms']:8.2f} ms        (target <= 100 ms: "
          f"{verdict_val})")
    print(f"  graph + plan       {row['plan_ms']:8.2f} ms")
    print(f"  run, cold          {row['cold_us_per_node']:8.2f} us/node   (target <= 50: "
          f"{verdict_cold}; median {row['cold_median_us_per_node']:.2f})")
    print(f"  run, all cached    {row['cached_us_per_node']:8.2f} us/node")
    print(f"  direct calls       {row['reference_us_per_node']:8.2f} us/node   (reference)")
    print(f"  ratio cold/direct  {row['cold_us_per_node'] / row['reference_us_per_node']:8.1f}x"
          f"   cached/direct {row['cached_us_per_node'] / row['reference_us_per_node']:.1f}x")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        measure_case("chain", chain(args.nodes), args.repeat, Path(tmp))
        measure_case("fan-in", fan_in(args.nodes), args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
