"""Typed function nodes: the `@node` decorator, node definitions and the registry.

A node is a plain Python function. Its type hints say which inputs are wired sockets (a
registered socket value class, or a primitive), which are widgets edited in place (a
primitive annotated with a widget spec: `steps: Annotated[int, Int(min=1)] = 20`), and
what it returns (one socket type, or a NamedTuple of them for several named outputs).
Deriving everything from the signature keeps a node's definition, its schema and its call
in one place, so they cannot drift apart the way ComfyUI's separate INPUT_TYPES /
RETURN_TYPES / FUNCTION can; and the decorated function stays callable as it was written.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

from graph_runtime.settings import Folders
from graph_runtime.sockets import PRIMITIVE_TYPES, PRIMITIVES, SocketType
from graph_runtime.widgets import Choice, Widget

__all__ = [
    "REGISTRY", "InputSpec", "NodeDef", "NodeDefinitionError", "OutputSpec", "Registry",
    "build_definition", "node", "socket_name",
]

# fingerprint(literal inputs, folders): a string that changes when files the node reads do.
Fingerprint = Callable[[Mapping[str, Any], Folders], "str | None"]
# absent_outputs(literal inputs, folders): outputs that will be empty, with the reason.
AbsentOutputs = Callable[[Mapping[str, Any], Folders], Mapping[str, str]]
# check_inputs(literal inputs[, folders]): what is wrong with a combination of values, by
# input name. A hook that takes a second parameter also gets the run's folders (a name that
# must exist in a model folder).
CheckInputs = Callable[..., Mapping[str, str]]


class NodeDefinitionError(TypeError):
    """A node function whose signature cannot be turned into sockets (a programming error)."""


# ---------------------------------------------------------------------------- sockets
@dataclass(frozen=True)
class InputSpec:
    """One input of a node: a socket type, and either a widget with its default (an
    editable literal) or none (must be wired unless optional)."""

    name: str
    type: str
    widget: Widget | None = None
    default: Any = None
    optional: bool = False

    @property
    def required(self) -> bool:
        return self.widget is None and not self.optional

    def schema(self, folders: Folders | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type,
                               "required": self.required}
        if self.widget is not None:
            spec = self.widget.spec(folders)
            out["widget"] = spec.pop("widget")
            out["default"] = self.default
            out.update(spec)
        return out


@dataclass(frozen=True)
class OutputSpec:
    name: str
    type: str


@dataclass
class NodeDef:
    """Everything the engine knows about a node type."""

    name: str
    func: Callable[..., Any]
    inputs: dict[str, InputSpec]
    outputs: list[OutputSpec]
    category: str = "misc"
    description: str = ""
    display_name: str = ""
    output_node: bool = False
    version: int = 1
    fingerprint: Fingerprint | None = None
    absent_outputs: AbsentOutputs | None = None
    check_inputs: CheckInputs | None = None
    multi_output: bool = False
    # Optional sockets without a Python default: an unlinked one is passed as None.
    unlinked: dict[str, None] = field(default_factory=dict)

    def schema(self, folders: Folders | None = None) -> dict[str, Any]:
        """JSON schema for the front end and `noodle nodes --json`."""
        return {
            "name": self.name,
            "display_name": self.display_name or self.name,
            "category": self.category,
            "description": self.description,
            "inputs": [spec.schema(folders) for spec in self.inputs.values()],
            "outputs": [{"name": o.name, "type": o.type} for o in self.outputs],
            "output_node": self.output_node,
            "version": self.version,
        }

    def call(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Run the function and return its outputs by name."""
        result = self.func(**{**self.unlinked, **kwargs} if self.unlinked else kwargs)
        if not self.outputs:
            return {}
        if self.multi_output:
            return {o.name: getattr(result, o.name) for o in self.outputs}
        return {self.outputs[0].name: result}


# ---------------------------------------------------------------------------- signatures
def socket_name(annotation: Any) -> str | None:
    """The socket type name an annotation stands for, or None if it is not one."""
    if annotation in PRIMITIVES:
        return PRIMITIVES[annotation]
    name = getattr(annotation, "__socket__", None)
    return name if isinstance(name, str) else None


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _split_annotated(annotation: Any) -> tuple[Any, Widget | None]:
    """`Annotated[int, Int(...)]` -> `(int, Int(...))`; anything else -> `(it, None)`."""
    if typing.get_origin(annotation) is not Annotated:
        return annotation, None
    base, *meta = typing.get_args(annotation)
    widgets = [m for m in meta if isinstance(m, Widget)]
    return base, (widgets[0] if widgets else None)


def _is_namedtuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


class _Signature:
    """Reads one function's signature into sockets, checking each against a registry."""

    def __init__(self, func: Callable[..., Any], name: str, registry: Registry,
                 localns: Mapping[str, Any] | None) -> None:
        self.func, self.name, self.registry = func, name, registry
        try:
            self.hints = typing.get_type_hints(func, localns=dict(localns or {}),
                                               include_extras=True)
        except NameError as exc:
            raise NodeDefinitionError(f"{name}: cannot resolve a type hint: {exc}") from exc

    def socket(self, annotation: Any, what: str) -> str:
        socket = socket_name(annotation)
        if socket is None:
            raise NodeDefinitionError(f"{self.name}: {what} is annotated {annotation!r}, "
                                      "which is not a socket type")
        if socket not in self.registry.socket_types:
            raise NodeDefinitionError(f"{self.name}: {what} has the unknown socket type "
                                      f"{socket!r}; register it with @socket_type")
        return socket

    def input(self, param: inspect.Parameter) -> InputSpec:
        pname, empty = param.name, inspect.Parameter.empty
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise NodeDefinitionError(f"{self.name}: *args/**kwargs cannot become sockets")
        if pname not in self.hints:
            raise NodeDefinitionError(f"{self.name}: input {pname!r} has no type hint")
        annotation, widget = _split_annotated(self.hints[pname])
        annotation, optional = _unwrap_optional(annotation)
        socket = self.socket(annotation, f"input {pname!r}")
        if isinstance(param.default, Widget):
            raise NodeDefinitionError(f"{self.name}: {pname!r} has a widget as its default; "
                                      f"write `{pname}: Annotated[type, Widget(...)] = value`")
        if widget is None:
            if param.default is not empty and param.default is not None:
                raise NodeDefinitionError(f"{self.name}: {pname!r} has a default but no "
                                          "widget; annotate it with Annotated[..., Widget]")
            return InputSpec(pname, socket, optional=optional or param.default is None)
        if socket != widget.socket:
            raise NodeDefinitionError(f"{self.name}: widget {type(widget).__name__} on "
                                      f"{pname!r} needs a {widget.socket} annotation")
        if param.default is empty:
            raise NodeDefinitionError(f"{self.name}: widget input {pname!r} needs a default")
        static = not (isinstance(widget, Choice) and callable(widget.options))
        problem = widget.check(param.default) if static else None
        if problem is not None:
            raise NodeDefinitionError(f"{self.name}: default of {pname!r}: {problem[1]}")
        return InputSpec(pname, socket, widget=widget, default=param.default)

    def outputs(self, output: str | None) -> tuple[list[OutputSpec], bool]:
        ret = self.hints.get("return", None)
        if ret is None or ret is type(None):
            return [], False
        if _is_namedtuple(ret):
            field_hints = typing.get_type_hints(ret)
            return [OutputSpec(f, self.socket(field_hints.get(f), f"output {f!r}"))
                    for f in ret._fields], True
        socket = self.socket(ret, "the return type")
        return [OutputSpec(output or socket.lower(), socket)], False


def build_definition(func: Callable[..., Any], name: str, registry: Registry, *,
                     category: str = "misc", output: str | None = None,
                     output_node: bool = False, version: int = 1,
                     fingerprint: Fingerprint | None = None,
                     absent_outputs: AbsentOutputs | None = None,
                     check_inputs: CheckInputs | None = None,
                     display_name: str = "",
                     localns: Mapping[str, Any] | None = None) -> NodeDef:
    """The definition of `func` as node type `name`, its sockets checked against the
    socket types `registry` knows. `localns` resolves string annotations that name
    locals of the scope the node is defined in (a node made inside a function)."""
    reader = _Signature(func, name, registry, localns)
    params = inspect.signature(func).parameters.values()
    inputs = {p.name: reader.input(p) for p in params}
    outputs, multi = reader.outputs(output)
    unlinked = {p.name: None for p in params
                if inputs[p.name].optional and p.default is inspect.Parameter.empty}
    return NodeDef(
        name=name, func=func, inputs=inputs, outputs=outputs, category=category,
        description=inspect.cleandoc(func.__doc__ or ""), display_name=display_name,
        output_node=output_node, version=version, fingerprint=fingerprint,
        absent_outputs=absent_outputs, check_inputs=check_inputs, multi_output=multi,
        unlinked=unlinked,
    )


# ---------------------------------------------------------------------------- registry
class Registry:
    """Node types and socket types by name. The process-wide default is `REGISTRY`; tests
    may build their own. A new registry knows the primitive socket types."""

    def __init__(self) -> None:
        self._defs: dict[str, NodeDef] = {}
        self.socket_types: dict[str, SocketType] = {t.name: t for t in PRIMITIVE_TYPES}
        self._providers: dict[str, Callable[..., Any]] = {}

    def add(self, definition: NodeDef) -> NodeDef:
        existing = self._defs.get(definition.name)
        if existing is not None and existing.func is not definition.func:
            same_place = (existing.func.__module__ == definition.func.__module__
                          and existing.func.__qualname__ == definition.func.__qualname__)
            if not same_place:
                raise NodeDefinitionError(f"node type {definition.name!r} registered twice")
        self._defs[definition.name] = definition
        return definition

    def add_socket_type(self, socket: SocketType) -> SocketType:
        """Register a socket type. Several node libraries may declare one type (a node pack
        reusing IMAGE); the first description stays, but a different colour or set of
        accepted types under a known name is an error, since links would depend on order."""
        existing = self.socket_types.get(socket.name)
        if existing is None:
            self.socket_types[socket.name] = socket
            return socket
        if (existing.color, existing.accepts) != (socket.color, socket.accepts):
            raise NodeDefinitionError(f"socket type {socket.name!r} registered twice, with "
                                      "different colours or accepted types")
        return existing

    def accepts(self, expected: str, produced: str) -> bool:
        """Whether an output of type `produced` may be linked into an input of `expected`."""
        socket = self.socket_types.get(expected)
        return produced == expected if socket is None else socket.takes(produced)

    def get(self, name: str) -> NodeDef | None:
        """The definition, or None — also for a name that is not a string (a workflow's
        `type` may be anything before validation has looked at it)."""
        return self._defs.get(name) if isinstance(name, str) else None

    def provide(self, name: str, fn: Callable[..., Any]) -> None:
        """Offer a named service to the engine's front ends (e.g. the model lists a client
        protocol reports). The engine asks by name and never learns what the library is
        about; a later registration under the same name replaces the earlier one."""
        self._providers[name] = fn

    def provider(self, name: str) -> Callable[..., Any] | None:
        """The service registered under `name`, or None when the node library offers none."""
        return self._providers.get(name)

    def __getitem__(self, name: str) -> NodeDef:
        return self._defs[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._defs

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._defs))

    def __len__(self) -> int:
        return len(self._defs)

    def schemas(self, folders: Folders | None = None) -> dict[str, dict[str, Any]]:
        """Every node's schema by type name; choices that list a folder list `folders`'."""
        folders = folders if folders is not None else Folders.from_env()
        return {name: self._defs[name].schema(folders) for name in sorted(self._defs)}

    def type_schemas(self) -> dict[str, dict[str, Any]]:
        """Every socket type's name, colour and accepted types, for the canvas."""
        return {name: self.socket_types[name].schema() for name in sorted(self.socket_types)}


REGISTRY = Registry()


def node(
    name: str,
    *,
    category: str = "misc",
    output: str | None = None,
    output_node: bool = False,
    version: int = 1,
    fingerprint: Fingerprint | None = None,
    absent_outputs: AbsentOutputs | None = None,
    check_inputs: CheckInputs | None = None,
    display_name: str = "",
    registry: Registry | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `func` as node type `name`; the function itself is returned unchanged.

    `output` names a single output (default: the socket type in lower case).
    `version` enters the cache signature: bump it when the node's behaviour changes.
    `fingerprint(inputs, folders)` returns a string for nodes that read files (path, size,
    mtime), so an edited file on disk invalidates the cache although the literal inputs did
    not change. `absent_outputs(inputs, folders)` names outputs the node will leave empty
    for these inputs, with the reason, so that linking one fails validation, not the run.
    `check_inputs(inputs)` gets the literal inputs that passed their widgets (defaults
    filled in; linked and refused ones left out), and names the inputs whose *combination* the node
    cannot run (steps / denoise too long a schedule, width x height x batch too large to
    allocate), with the reason: validation reports them, so such a value never starts a run.
    A hook declared `check_inputs(inputs, folders)` also gets the run's folders (a prompt
    naming an embedding that no model folder has).
    """

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        target = REGISTRY if registry is None else registry
        # The defining scope's locals, for annotations that name them (postponed
        # evaluation turns every annotation into a string).
        caller = inspect.currentframe()
        localns = caller.f_back.f_locals if caller is not None and caller.f_back else None
        definition = build_definition(
            func, name, target, category=category, output=output, output_node=output_node,
            version=version, fingerprint=fingerprint, absent_outputs=absent_outputs,
            check_inputs=check_inputs,
            display_name=display_name, localns=localns)
        target.add(definition)
        func.__node__ = definition  # type: ignore[attr-defined]
        return func

    return wrap
