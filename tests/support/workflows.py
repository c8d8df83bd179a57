"""Workflow builders, so tests state the graph and not the v1 file's boilerplate.

`wf({id: (type, inputs)})` is a loaded `Workflow`; `workflow_dict` is the same as plain JSON
(to POST, write to a file or hand to the canvas). A node may carry a third item: extra keys
of the node dict, such as `{"ui": {...}}`. Keyword arguments become top-level keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from graph_runtime.executor import Executor, RunResult
from graph_runtime.workflow import FORMAT, VERSION, Workflow, apply_overrides, load_workflow
from tests.support.paths import WORKFLOWS

NodeSpec = (tuple[str, Mapping[str, Any]]
            | tuple[str, Mapping[str, Any], Mapping[str, Any]])


def link(src: str, output: str) -> dict[str, str]:
    """An input linked to output `output` of node `src`."""
    return {"from": src, "output": output}


def workflow_dict(nodes: Mapping[str, NodeSpec], **top: Any) -> dict[str, Any]:
    """The v1 JSON object of {id: (type, inputs[, extra node keys])} plus top-level keys."""
    data: dict[str, Any] = {"format": FORMAT, "version": VERSION, "nodes": {}}
    for nid, (ntype, inputs, *extra) in nodes.items():
        data["nodes"][nid] = {"type": ntype, "inputs": dict(inputs), **(extra[0] if extra else {})}
    data.update(top)
    return data


def wf(nodes: Mapping[str, NodeSpec], **top: Any) -> Workflow:
    """A loaded workflow of {id: (type, inputs[, extra node keys])}."""
    return load_workflow(workflow_dict(nodes, **top))


def add_nodes(workflow: Workflow | dict[str, Any], nodes: Mapping[str, NodeSpec]) -> None:
    """Add or replace nodes, given as for `wf`, in a loaded workflow or in its JSON."""
    target = workflow.nodes if isinstance(workflow, Workflow) else workflow["nodes"]
    target.update(workflow_dict(nodes)["nodes"])


def write_workflow(path: Path, nodes: Mapping[str, NodeSpec], **top: Any) -> Path:
    """Write a workflow file for commands that take a path; returns the path."""
    path.write_text(json.dumps(workflow_dict(nodes, **top)))
    return path


def shipped(name: str, overrides: Sequence[str] = ()) -> Workflow:
    """A workflow from workflows/, with `--set`-style overrides applied."""
    loaded = load_workflow(WORKFLOWS / name)
    assert apply_overrides(loaded, list(overrides)) == []
    return loaded


def run(executor: Executor, workflow: Workflow | dict[str, Any], out: Path) -> RunResult:
    """Run into `out` and fail the test with the node's traceback if the run failed."""
    result = executor.run(workflow, output_dir=out)
    assert result.ok, result.error and result.error.get("traceback")
    return result
