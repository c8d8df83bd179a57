"""The workflow file, format v1: load, save, command-line overrides.

A workflow is JSON with nodes keyed by id; each node has a `type`, its `inputs` (a literal
or a link `{"from": id, "output": name}`) and UI-only data under `ui`. Loading checks only
the *shape* of the file (so an error can say exactly where in the file it is); whether the
types and values make sense for the registered nodes is `graph.validate`'s job, because that
needs the node library and should report every problem at once.

Round trips are lossless: node dicts are kept as loaded (unknown keys included) and unknown
top-level keys are kept in `Workflow.extra`, so a file written by a newer front end survives
being loaded and saved by this one.

Other tools' formats come in through importers: a node library registers a function that
turns a parsed document of its format into a v1 dict (`register_importer`), and
`import_workflow` / `load_workflow_file` try v1 first, then each importer in turn. A PNG is
read for its text chunks, the `workflow` chunk first, so an image made by any tool whose
format has an importer opens like a file. The engine itself knows no format but its own.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graph_runtime.strict_json import parse_json

if TYPE_CHECKING:
    from graph_runtime.registry import Registry

FORMAT = "noodle.workflow"
VERSION = 1
_KNOWN_TOP = frozenset({"format", "version", "name", "description", "nodes", "ui"})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class WorkflowFormatError(ValueError):
    """The file is not a well-formed v1 workflow. The message names where in the file."""

    def __init__(self, message: str, where: str = "") -> None:
        self.where, self.message = where, message
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


def _parse_document(text: str | bytes, where: str) -> Any:
    """`parse_json` with its errors as WorkflowFormatError naming `where` in the file."""
    try:
        return parse_json(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(f"not valid JSON: {exc.msg}",
                                  f"{where} {_json_where(exc)}".strip()) from exc
    except UnicodeDecodeError as exc:
        raise WorkflowFormatError("not UTF-8 text", where) from exc
    except ValueError as exc:
        raise WorkflowFormatError(f"not acceptable JSON: {exc}", where) from exc


# A node's optional "mode": skipped and passed through, or skipped with what only it feeds.
NODE_MODES = ("bypass", "mute")


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
    if "mode" in nd and nd["mode"] not in NODE_MODES:
        raise WorkflowFormatError(f"\"mode\" must be one of {', '.join(NODE_MODES)} (or absent "
                                  f"for an active node), got {nd['mode']!r}", where + ".mode")


# A node library's upgrade of documents saved before it renamed node types or inputs: a
# checked v1 dict in, the same dict (nothing to change) or a new one out, never edited.
Upgrade = Callable[[dict[str, Any]], dict[str, Any]]
_UPGRADES: list[Upgrade] = []


def register_upgrade(fn: Upgrade) -> None:
    """Pass every v1 document `from_dict` reads from now on through `fn` (once per
    function), so files saved by an older node library keep loading."""
    if fn not in _UPGRADES:
        _UPGRADES.append(fn)


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
    for upgrade in _UPGRADES:
        data = upgrade(data)
    nodes = data["nodes"]
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
    return from_dict(_parse_document(text, origin))


def dumps(wf: Workflow) -> str:
    return json.dumps(wf.to_dict(), indent=2, ensure_ascii=False) + "\n"


def save_workflow(wf: Workflow, path: str | Path) -> None:
    Path(path).write_text(dumps(wf), encoding="utf-8")


def parse_value(text: str) -> Any:
    """`--set` values: JSON where they parse (numbers, booleans, lists), else the string."""
    try:
        return parse_json(text)
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


# ---------------------------------------------------------------------------- importers
# A parsed document (or a PNG's text chunks, see `import_workflow`) -> a v1 dict, or None
# when the document is not in the importer's format. An importer that recognises its
# format but finds it broken raises WorkflowFormatError saying where.
Importer = Callable[[Any, "Registry"], "dict[str, Any] | None"]
_IMPORTERS: dict[str, Importer] = {}


def register_importer(name: str, fn: Importer) -> None:
    """Make `import_workflow` try `fn` on documents that are not v1; `name` is the format
    name it reports (e.g. "other-tool-ui"). Registering a name again replaces it."""
    _IMPORTERS[name] = fn


def importers() -> dict[str, Importer]:
    """The registered importers by format name, in the order they are tried."""
    return dict(_IMPORTERS)


def _is_png(data: Any) -> bool:
    return isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:8]) == PNG_SIGNATURE


def png_text_chunks(data: bytes) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG by keyword, in file order. A plain reader
    of the chunk layout, so the engine needs no imaging library to open a workflow."""
    if bytes(data[:8]) != PNG_SIGNATURE:
        raise WorkflowFormatError("not a PNG file", "png")
    out: dict[str, str] = {}
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = bytes(data[pos + 8:pos + 8 + length])
        pos += 12 + length
        if kind == b"IEND":
            break
        if kind not in (b"tEXt", b"zTXt", b"iTXt") or b"\0" not in body:
            continue
        key_raw, rest = body.split(b"\0", 1)
        key = key_raw.decode("latin-1")
        try:
            if kind == b"tEXt":
                out[key] = rest.decode("latin-1")
            elif kind == b"zTXt":
                out[key] = zlib.decompress(rest[1:]).decode("latin-1")
            else:
                compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]
                out[key] = (zlib.decompress(text) if compressed else text).decode("utf-8")
        except (zlib.error, UnicodeDecodeError, IndexError):
            continue  # a damaged chunk; another may still hold a workflow
    return out


def _import_document(data: Any, registry: Registry) -> tuple[Workflow, str]:
    if isinstance(data, dict) and "format" in data:
        return from_dict(data), "noodle"
    for name, fn in _IMPORTERS.items():
        converted = fn(data, registry)
        if converted is not None:
            return from_dict(converted), name
    kinds = ", ".join(["noodle", *_IMPORTERS])
    raise WorkflowFormatError(f"not a workflow in a known format (known: {kinds})", "top level")


def _import_png(data: bytes, registry: Registry) -> Workflow:
    chunks = png_text_chunks(data)
    order = sorted(chunks, key=lambda key: key != "workflow")  # ours first, then file order
    first_error: WorkflowFormatError | None = None
    for key in order:
        try:
            document = parse_json(chunks[key])
        except ValueError:
            continue
        try:
            return _import_document(document, registry)[0]
        except WorkflowFormatError as exc:
            first_error = first_error or WorkflowFormatError(
                exc.message, f"png chunk {key!r}" + (f" {exc.where}" if exc.where else ""))
    if first_error is not None:
        raise first_error
    raise WorkflowFormatError("this PNG carries no workflow", "png")


def import_workflow(data: Any, registry: Registry) -> tuple[Workflow, str]:
    """A workflow from a parsed JSON document in any known format, or from the bytes of a
    PNG that carries one. Returns it with the name of the format it was read from
    ("noodle", an importer's name, or "png")."""
    if _is_png(data):
        return _import_png(bytes(data), registry), "png"
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = parse_json(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WorkflowFormatError("neither a PNG nor JSON text", "top level") from exc
        except ValueError as exc:
            raise WorkflowFormatError(f"not acceptable JSON: {exc}", "top level") from exc
    return _import_document(data, registry)


def load_workflow_file(path: Path | str, registry: Registry) -> Workflow:
    """A workflow file in any known format, JSON or PNG (told apart by content). A file in
    another tool's format gets the file's stem as its name when it has none."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WorkflowFormatError(f"cannot read: {exc.strerror or exc}", str(path)) from exc
    try:
        if _is_png(raw):
            wf, kind = _import_png(raw, registry), "png"
        else:
            wf, kind = _import_document(_parse_document(raw, ""), registry)
    except WorkflowFormatError as exc:
        raise WorkflowFormatError(exc.message, f"{path} {exc.where}".strip()) from exc
    if kind != "noodle" and not wf.name:
        wf.name = path.stem
    return wf
