"""Checking a ComfyUI prompt the way ComfyUI does, with our validation underneath.

The prompt is converted by the registered importer into a v1 workflow (node ids kept), and
`graph.validate` finds every problem. What differs is how ComfyUI reads the result, and
clients depend on it:

* a node without `class_type`, or of a class we do not have, fails the whole prompt as
  `invalid_prompt` (every such node is named, not just the first);
* literal values are converted first (`"20"` is a fine INT) and unknown input names are
  ignored, as ComfyUI's validation does;
* only what feeds an output node matters: each output is checked with its ancestors, the
  outputs that pass are queued (pruned to what they need) and the others come back in
  `node_errors`; when none passes, the answer is a 400 `prompt_outputs_failed_validation`.

Our error codes map to ComfyUI's error types (`required_input_missing`, `value_not_in_list`,
...), with ComfyUI's messages, details and `extra_info`, since clients print them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from graph_runtime.graph import build_graph, output_nodes, validate
from graph_runtime.registry import InputSpec, Registry
from graph_runtime.server.comfy.object_info import input_entry
from graph_runtime.settings import Folders
from graph_runtime.widgets import Choice, Float, Int
from graph_runtime.workflow import Workflow, WorkflowFormatError, import_workflow, is_link

Reason = dict[str, Any]
COMBO_LIST_LIMIT = 20  # longer choice lists are summarised, as ComfyUI does


class PromptRejected(Exception):
    """The whole prompt is refused: `error` and `node_errors` are the 400 body."""

    def __init__(self, error: Reason, node_errors: dict[str, Any] | None = None) -> None:
        self.error, self.node_errors = error, node_errors or {}
        super().__init__(error["message"])


def reason(kind: str, message: str, details: str = "", **extra: Any) -> Reason:
    """One ComfyUI error object."""
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


@dataclass
class CheckedPrompt:
    """A prompt ready to queue: the workflow pruned to its good outputs, those outputs,
    and the errors of the outputs that were left out."""

    workflow: Workflow
    outputs: list[str]
    node_errors: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- shape
def check_classes(prompt: Any, registry: Registry) -> None:
    """Every node is an object with a class we know; else `PromptRejected`."""
    if not isinstance(prompt, dict):
        raise PromptRejected(reason("invalid_prompt", "The prompt must be an object of nodes "
                                    "keyed by id.", f"got {type(prompt).__name__}"))
    if not prompt:
        raise PromptRejected(reason("prompt_no_outputs", "Prompt has no outputs"))
    for nid, nd in prompt.items():
        if not isinstance(nd, dict) or not isinstance(nd.get("class_type"), str):
            raise PromptRejected(reason(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{nid}'"))
    unknown = {str(nid): nd["class_type"] for nid, nd in prompt.items()
               if nd["class_type"] not in registry}
    if not unknown:
        return
    node_errors = {nid: {"errors": [reason("invalid_prompt",
                                           f"Cannot execute because node {cls} does not exist.",
                                           f"Node ID '#{nid}'")],
                         "dependent_outputs": [], "class_type": cls}
                   for nid, cls in unknown.items()}
    if len(unknown) == 1:
        ((nid, cls),) = unknown.items()
        error = reason("invalid_prompt", f"Cannot execute because node {cls} does not exist.",
                       f"Node ID '#{nid}'")
    else:
        names = ", ".join(f"#{nid} {cls}" for nid, cls in unknown.items())
        error = reason("invalid_prompt",
                       f"Cannot execute because {len(unknown)} nodes do not exist: {names}.",
                       "; ".join(f"Node ID '#{nid}'" for nid in unknown))
    raise PromptRejected(error, node_errors)


def convert(prompt: dict[str, Any], registry: Registry) -> Workflow:
    """The prompt as a v1 workflow (a copy: the submitted prompt stays untouched)."""
    try:
        wf, _ = import_workflow(copy.deepcopy(prompt), registry)
    except WorkflowFormatError as exc:
        raise PromptRejected(reason("invalid_prompt", f"Cannot read the prompt: {exc}",
                                    str(exc))) from exc
    return wf


# ---------------------------------------------------------------------------- values
def _coerce(spec: InputSpec, value: Any) -> Any:
    """ComfyUI's conversion of a literal to its input's primitive type (raises on failure)."""
    kind = spec.type
    if isinstance(spec.widget, Choice) or is_link(value):
        return value
    if kind == "INT":
        return int(value)
    if kind == "FLOAT":
        return float(value)
    if kind == "STRING":
        return str(value)
    if kind == "BOOLEAN":
        return bool(value)
    return value


def normalise(wf: Workflow, registry: Registry, folders: Folders) -> dict[str, list[Reason]]:
    """Drop unknown inputs and convert literals in place; returns conversion failures."""
    failures: dict[str, list[Reason]] = {}
    for nid, nd in wf.nodes.items():
        definition = registry.get(nd.get("type"))
        if definition is None:
            continue
        inputs = {k: v for k, v in (nd.get("inputs") or {}).items() if k in definition.inputs}
        for name, value in list(inputs.items()):
            spec = definition.inputs[name]
            try:
                inputs[name] = _coerce(spec, value)
            except (TypeError, ValueError, OverflowError) as exc:
                failures.setdefault(nid, []).append(reason(
                    "invalid_input_type", f"Failed to convert an input value to a {spec.type} "
                    "value", f"{name}, {value}, {exc}", input_name=name,
                    input_config=input_entry(spec, folders), received_value=value,
                    exception_message=str(exc)))
                del inputs[name]
        nd["inputs"] = inputs
    return failures


# ---------------------------------------------------------------------------- errors
def _value(wf: Workflow, nid: str | None, name: str | None) -> Any:
    if nid is None or name is None or nid not in wf.nodes:
        return None
    return (wf.nodes[nid].get("inputs") or {}).get(name)


def _choice_reason(spec: InputSpec, name: str, value: Any, folders: Folders) -> Reason:
    assert isinstance(spec.widget, Choice)
    choices = spec.widget.current_options(folders)
    config: list[Any] | None = input_entry(spec, folders)
    listed = str(choices)
    if len(choices) > COMBO_LIST_LIMIT:
        listed, config = f"(list of length {len(choices)})", None
    return reason("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
                  input_name=name, input_config=config, received_value=value)


def _range_reason(spec: InputSpec, name: str, value: Any, folders: Folders) -> Reason:
    widget = spec.widget
    config = input_entry(spec, folders)
    low = widget.min if isinstance(widget, (Int, Float)) else None
    if low is not None and isinstance(value, (int, float)) and value < low:
        return reason("value_smaller_than_min", f"Value {value} smaller than min of {low}", name,
                      input_name=name, input_config=config, received_value=value)
    high = widget.max if isinstance(widget, (Int, Float)) else None
    return reason("value_bigger_than_max", f"Value {value} bigger than max of {high}", name,
                  input_name=name, input_config=config, received_value=value)


def _source_type(wf: Workflow, registry: Registry, link: Any) -> str:
    src = wf.nodes.get(link["from"]) if is_link(link) else None
    definition = registry.get(src.get("type")) if src is not None else None
    out = next((o for o in definition.outputs if o.name == link.get("output")), None) \
        if definition is not None else None
    return out.type if out is not None else "*"


def to_reason(error: dict[str, Any], wf: Workflow, registry: Registry,
              folders: Folders) -> Reason:
    """One of our validation errors as ComfyUI's error object."""
    nid, name, code, message = error["node"], error["input"], error["code"], error["message"]
    nd = wf.nodes.get(nid) if nid is not None else None
    definition = registry.get(nd.get("type")) if nd is not None else None
    spec = definition.inputs.get(name) if definition is not None and name else None
    value = _value(wf, nid, name)
    config = input_entry(spec, folders) if spec is not None else None
    if code == "missing_input":
        return reason("required_input_missing", "Required input is missing", str(name),
                      input_name=name)
    if code == "invalid_choice" and spec is not None and isinstance(spec.widget, Choice):
        return _choice_reason(spec, str(name), value, folders)
    if code == "value_out_of_range" and spec is not None:
        return _range_reason(spec, str(name), value, folders)
    if code == "invalid_value_type" and spec is not None:
        return reason("invalid_input_type",
                      f"Failed to convert an input value to a {spec.type} value",
                      f"{name}, {value}, {message}", input_name=name, input_config=config,
                      received_value=value, exception_message=message)
    if code == "type_mismatch" and spec is not None:
        received = _source_type(wf, registry, value)
        return reason("return_type_mismatch", "Return type mismatch between linked nodes",
                      f"{name}, received_type({received}) mismatch input_type({spec.type})",
                      input_name=name, input_config=config, received_type=received,
                      linked_node=[value["from"], value.get("output")] if is_link(value)
                      else None)
    if code in ("dangling_link", "unknown_output"):
        return reason("bad_linked_input", "Bad linked input", f"{name}: {message}",
                      input_name=name, input_config=config, received_value=None)
    if code == "cycle":
        return reason("dependency_cycle", "Dependency cycle detected", message)
    return reason("custom_validation_failed", "Custom validation failed for node",
                  f"{name} - {message}" if name else message, input_name=name)


# ---------------------------------------------------------------------------- outputs
def _closure(g: nx.DiGraph, node: str) -> set[str]:
    return {node} | nx.ancestors(g, node)


def _failed_details(bad: dict[str, list[Reason]], nodes: Iterable[str]) -> str:
    lines = [f"{r['message']}: {r['details']}" for nid in nodes for r in bad.get(nid, [])]
    return "\n".join(lines)


def check_prompt(prompt: Any, registry: Registry, folders: Folders,
                 targets: list[str] | None = None) -> CheckedPrompt:
    """Validate a submitted prompt; `PromptRejected` when nothing in it can run."""
    check_classes(prompt, registry)
    wf = convert(prompt, registry)
    bad: dict[str, list[Reason]] = normalise(wf, registry, folders)
    for error in validate(wf, registry, folders=folders):
        if error["node"] is None:
            continue  # graph-level (no outputs): decided below, per output
        bad.setdefault(error["node"], []).append(to_reason(error, wf, registry, folders))
    outputs = output_nodes(wf, registry)
    if targets is not None:
        wanted = {str(t) for t in targets}
        outputs = [o for o in outputs if o in wanted]
    if not outputs:
        raise PromptRejected(reason("prompt_no_outputs", "Prompt has no outputs"))
    g = build_graph(wf, registry)
    good: list[str] = []
    keep: set[str] = set()
    node_errors: dict[str, Any] = {}
    failed: list[str] = []
    for out in outputs:
        closure = _closure(g, out)
        broken = sorted(n for n in closure if n in bad)
        if not broken:
            good.append(out)
            keep |= closure
            continue
        failed.append(out)
        for nid in broken:
            entry = node_errors.setdefault(nid, {"errors": bad[nid], "dependent_outputs": [],
                                                 "class_type": wf.nodes[nid]["type"]})
            entry["dependent_outputs"].append(out)
    if not good:
        raise PromptRejected(reason("prompt_outputs_failed_validation",
                                    "Prompt outputs failed validation",
                                    _failed_details(bad, node_errors)), node_errors)
    pruned = Workflow({nid: nd for nid, nd in wf.nodes.items() if nid in keep}, wf.ui,
                      wf.name, wf.description, dict(wf.extra), wf.present)
    return CheckedPrompt(pruned, good, node_errors)
