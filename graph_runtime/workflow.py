"""The workflow file, format v1: load, save, command-line overrides.

A workflow is JSON with nodes keyed by id; each node has a `type`, its `inputs` (a literal
or a link `{"from": id, "output": name}`) and UI-only data under `ui`. Loading checks only
the *shape* of the file (so an error can say exactly where in the file it is); whether the
types and values make sense for the registered nodes is `graph.validate`'s job, because that
needs the node library and should report every problem at once.

Round trips are lossless: node dicts are kept as loaded (unknown keys included) and unknown
top-level keys are kept in `Workflow.extra`, so a file written by a newer front end survives
being loaded and saved by this one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "noodle.workflow"
VERSION = 1
_KNOWN_TOP = frozenset({"format", "version", "name", "description", "nodes", "ui"})

class WorkflowFormatError(ValueError):
    """The file is not a well-formed v1 workflow. The message names where in the file."""

    def __init__(self, message: str, where: str = "") -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


def is_link(value: Any) -> bool:
    """Whether an input value is a link to another node's output (checked shape)."""
    return type(value) is dict and "from" in value


@dataclass
class Workflow:
    """A loaded workflow. `nodes` maps id -> the node dict exactly as in the file."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    ui: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Which optional top-level keys the file had, so saving writes back the same keys.
    present: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The v1 JSON object. Node dicts are shared, not copied: treat it as read-only."""
        out: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        if self.name or "name" in self.present:
            out["name"] = self.name
        if self.description or "description" in self.present:
            out["description"] = self.description
        out["nodes"] = self.nodes
        if self.ui or "ui" in self.present:
            out["ui"] = self.ui
        out.update(self.extra)
        return out

    def copy(self) -> Workflow:
        """A copy whose node and input dicts may be edited without touching this one."""
        nodes = {nid: {**nd, "inputs": dict(nd.get("inputs") or {})}
                 for nid, nd in self.nodes.items()}
        return Workflow(nodes, self.ui, self.name, self.description, dict(self.extra),
                        self.present)


def _json_where(exc: json.JSONDecodeError) -> str:
    return f"line {exc.lineno} column {exc.colno}"


def _check_node(nid: str, nd: Any) -> None:
    where = f"nodes[{nid!r}]"
    if not isinstance(nd, dict):
        raise WorkflowFormatError(f"a node must be an object, got {type(nd).__name__}", where)
    ntype = nd.get("type")
    if not isinstance(ntype, str) or not ntype:
        raise WorkflowFormatError("missing or non-string \"type\"", where + ".type")
    inputs = nd.get("inputs", {})
    if not isinstance(inputs, dict):
        raise WorkflowFormatError("\"inputs\" must be an object", where + ".inputs")
    for iname, value in inputs.items():
        if is_link(value):
            at = f"{where}.inputs.{iname}"
            if not isinstance(value["from"], str):
                raise WorkflowFormatError("a link's \"from\" must be a node id string",
                                          at + ".from")
            if not isinstance(value.get("output"), str):
                raise WorkflowFormatError("a link needs an \"output\" name string",
                                          at + ".output")
    ui = nd.get("ui", {})
    if not isinstance(ui, dict):
        raise WorkflowFormatError("\"ui\" must be an object", where + ".ui")


def from_dict(data: Any) -> Workflow:
    """Check the shape of a parsed v1 document and wrap it (the dicts are not copied)."""
    if not isinstance(data, dict):
        raise WorkflowFormatError(f"a workflow must be a JSON object, got {type(data).__name__}",
                                  "top level")
    if data.get("format") != FORMAT:
        raise WorkflowFormatError(f"expected \"format\": \"{FORMAT}\", got "
                                  f"{data.get('format')!r}", "format")
    version = data.get("version")
    if version != VERSION or isinstance(version, bool):
        raise WorkflowFormatError(f"unsupported version {version!r} (this build reads "
                                  f"version {VERSION})", "version")
    nodes = data.get("nodes")
    if not isinstance(nodes, dict):
        raise WorkflowFormatError("\"nodes\" must be an object keyed by node id", "nodes")
    for nid, nd in nodes.items():
        _check_node(nid, nd)
    ui = data.get("ui", {})
    if not isinstance(ui, dict):
        raise WorkflowFormatError("\"ui\" must be an object", "ui")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise WorkflowFormatError(f"\"{key}\" must be a string", key)
    extra = {k: v for k, v in data.items() if k not in _KNOWN_TOP}
    present = frozenset(k for k in ("name", "description", "ui") if k in data)
    return Workflow(nodes=dict(nodes), ui=ui, name=data.get("name", ""),
                    description=data.get("description", ""), extra=extra, present=present)


def load_workflow(source: str | Path | Mapping[str, Any] | Workflow) -> Workflow:
    """Load from a path, a JSON string, or an already parsed dict.

    A `str` that starts with `{` or `[` (after whitespace) is JSON text; any other `str`
    is a path.
    """
    if isinstance(source, Workflow):
        return source
    if isinstance(source, Mapping):
        return from_dict(dict(source))
    if isinstance(source, str) and source.lstrip()[:1] in ("{", "["):
        text, origin = source, "workflow"
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise WorkflowFormatError(f"cannot read: {exc.strerror or exc}", str(path)) from exc
        except UnicodeDecodeError as exc:
            raise WorkflowFormatError("not UTF-8 text", str(path)) from exc
        origin = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(f"not valid JSON: {exc.msg}",
                                  f"{origin} {_json_where(exc)}") from exc
    return from_dict(data)


def dumps(wf: Workflow) -> str:
    return json.dumps(wf.to_dict(), indent=2, ensure_ascii=False) + "\n"


def save_workflow(wf: Workflow, path: str | Path) -> None:
    Path(path).write_text(dumps(wf), encoding="utf-8")


def parse_value(text: str) -> Any:
    """`--set` values: JSON where they parse (numbers, booleans, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(wf: Workflow, overrides: list[str]) -> list[dict[str, Any]]:
    """Apply `NODE.INPUT=VALUE` overrides in place. Returns validation-style errors for
    malformed overrides and unknown node ids; an unknown *input* is left for `validate`
    to report as `unknown_input`, with the node library at hand."""
    errors: list[dict[str, Any]] = []
    for item in overrides:
        lhs, eq, raw = item.partition("=")
        nid, dot, iname = lhs.rpartition(".")
        if not eq or not dot or not nid or not iname:
            errors.append({"node": None, "input": None, "code": "invalid_override",
                           "message": f"{item!r} is not NODE.INPUT=VALUE"})
            continue
        if nid not in wf.nodes:
            errors.append({"node": nid, "input": iname, "code": "unknown_node",
                           "message": f"--set {item!r}: there is no node {nid!r}"})
            continue
        nd = wf.nodes[nid]
        new_inputs = dict(nd.get("inputs") or {})
        new_inputs[iname] = parse_value(raw)
        wf.nodes[nid] = {**nd, "inputs": new_inputs}
    return errors
