"""Typed function nodes: the `@node` decorator, socket types, widget specs, the registry.

A node is a plain Python function. Its type hints say which inputs are wired sockets
(annotated with a socket value class or a primitive), which are widgets edited in place
(a default built with `Int`, `Float`, `Text`, `Choice`, `Seed`, `Bool`), and what it returns
(one socket type, or a NamedTuple of them for several named outputs). Deriving everything
from the signature keeps a node's definition, its schema and its call in one place, so they
cannot drift apart the way ComfyUI's separate INPUT_TYPES / RETURN_TYPES / FUNCTION can.

The engine knows socket types only by name. The node library defines the value classes
(e.g. a wrapped UNet) and marks each with `__socket__ = "UNET"`; any such class can annotate.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from graph_runtime.widgets import Bool, Choice, Float, Int, Seed, Text, Widget

__all__ = [
    "COMPATIBLE", "PRIMITIVES", "REGISTRY", "SOCKET_TYPES", "Bool", "Choice", "Float",
    "InputSpec", "Int", "NodeDef", "NodeDefinitionError", "OutputSpec", "Registry", "Seed",
    "Text", "Widget", "build_definition", "node", "socket_name", "types_compatible",
]

# The closed set of socket types. Primitives double as widget value types.
PRIMITIVES: dict[type, str] = {int: "INT", float: "FLOAT", str: "STRING", bool: "BOOLEAN"}
SOCKET_TYPES: frozenset[str] = frozenset(
    {
        "TOKENIZER", "TEXT_ENCODER", "UNET", "VAE", "SCHEDULER", "TOKENS", "CONDITIONING",
        "LATENT", "IMAGE", "MASK", "INT", "FLOAT", "STRING", "BOOLEAN",
    }
)
# A wired INT may feed a FLOAT input; nothing else converts implicitly.
COMPATIBLE: frozenset[tuple[str, str]] = frozenset({("INT", "FLOAT")})


def types_compatible(produced: str, expected: str) -> bool:
    """Whether an output of type `produced` may be linked into an input of type `expected`."""
    return produced == expected or (produced, expected) in COMPATIBLE


class NodeDefinitionError(TypeError):
    """A node function whose signature cannot be turned into sockets (a programming error)."""


# ---------------------------------------------------------------------------- sockets
@dataclass(frozen=True)
class InputSpec:
    """One input of a node: a socket type, and either a widget (editable literal) or none
    (must be wired unless optional)."""

    name: str
    type: str
    widget: Widget | None = None
    optional: bool = False

    @property
    def required(self) -> bool:
        return self.widget is None and not self.optional

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type,
                               "required": self.required}
        if self.widget is not None:
            out.update(self.widget.spec())
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
    fingerprint: Callable[[Mapping[str, Any]], str | None] | None = None
    multi_output: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        """JSON schema for the front end and `noodle nodes --json`."""
        return {
            "name": self.name,
            "display_name": self.display_name or self.name,
            "category": self.category,
            "description": self.description,
            "inputs": [spec.schema() for spec in self.inputs.values()],
            "outputs": [{"name": o.name, "type": o.type} for o in self.outputs],
            "output_node": self.output_node,
            "version": self.version,
        }

    def call(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Run the function and return its outputs by name."""
        result = self.func(**kwargs)
        if not self.outputs:
            return {}
        if self.multi_output:
            return {o.name: getattr(result, o.name) for o in self.outputs}
        return {self.outputs[0].name: result}


def socket_name(annotation: Any) -> str | None:
    """Map an annotation to a socket type name, or None if it is not one."""
    if annotation in PRIMITIVES:
        return PRIMITIVES[annotation]
    name = getattr(annotation, "__socket__", None)
    if isinstance(name, str):
        if name not in SOCKET_TYPES:
            raise NodeDefinitionError(f"unknown socket type {name!r}")
        return name
    return None


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _is_namedtuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _default_output_name(socket: str) -> str:
    return socket.lower()


def build_definition(
    func: Callable[..., Any],
    name: str,
    category: str,
    output: str | None,
    output_node: bool,
    version: int,
    fingerprint: Callable[[Mapping[str, Any]], str | None] | None,
    display_name: str,
) -> NodeDef:
    hints = typing.get_type_hints(func, include_extras=False)
    sig = inspect.signature(func)
    inputs: dict[str, InputSpec] = {}
    for pname, param in sig.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise NodeDefinitionError(f"{name}: *args/**kwargs cannot become sockets")
        if pname not in hints:
            raise NodeDefinitionError(f"{name}: input {pname!r} has no type hint")
        annotation, optional = _unwrap_optional(hints[pname])
        default = param.default
        if isinstance(default, Widget):
            socket = socket_name(annotation)
            if socket != default.socket:
                raise NodeDefinitionError(
                    f"{name}: widget {type(default).__name__} on {pname!r} needs a "
                    f"{default.socket} annotation")
            inputs[pname] = InputSpec(pname, socket, widget=default)
            continue
        socket = socket_name(annotation)
        if socket is None:
            raise NodeDefinitionError(f"{name}: {pname!r} is annotated {annotation!r}, "
                                      "which is not a socket type")
        if default is not inspect.Parameter.empty and default is not None:
            raise NodeDefinitionError(f"{name}: {pname!r} has a plain default; use a widget")
        inputs[pname] = InputSpec(pname, socket, optional=optional or default is None)

    ret = hints.get("return", None)
    outputs: list[OutputSpec] = []
    multi = False
    if ret is None or ret is type(None):
        pass
    elif _is_namedtuple(ret):
        multi = True
        field_hints = typing.get_type_hints(ret)
        for fname in ret._fields:
            socket = socket_name(field_hints.get(fname))
            if socket is None:
                raise NodeDefinitionError(f"{name}: output {fname!r} is not a socket type")
            outputs.append(OutputSpec(fname, socket))
    else:
        socket = socket_name(ret)
        if socket is None:
            raise NodeDefinitionError(f"{name}: return type {ret!r} is not a socket type")
        outputs.append(OutputSpec(output or _default_output_name(socket), socket))

    doc = inspect.cleandoc(func.__doc__ or "")
    return NodeDef(
        name=name, func=func, inputs=inputs, outputs=outputs, category=category,
        description=doc, display_name=display_name, output_node=output_node,
        version=version, fingerprint=fingerprint, multi_output=multi,
    )


# ---------------------------------------------------------------------------- registry
class Registry:
    """Node types by name. The process-wide default is `REGISTRY`; tests may build their own."""

    def __init__(self) -> None:
        self._defs: dict[str, NodeDef] = {}

    def add(self, definition: NodeDef) -> NodeDef:
        existing = self._defs.get(definition.name)
        if existing is not None and existing.func is not definition.func:
            same_place = (existing.func.__module__ == definition.func.__module__
                          and existing.func.__qualname__ == definition.func.__qualname__)
            if not same_place:
                raise NodeDefinitionError(f"node type {definition.name!r} registered twice")
        self._defs[definition.name] = definition
        return definition

    def get(self, name: str) -> NodeDef | None:
        return self._defs.get(name)

    def __getitem__(self, name: str) -> NodeDef:
        return self._defs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._defs

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._defs))

    def __len__(self) -> int:
        return len(self._defs)

    def schemas(self) -> dict[str, dict[str, Any]]:
        return {name: self._defs[name].schema() for name in sorted(self._defs)}


REGISTRY = Registry()


def node(
    name: str,
    *,
    category: str = "misc",
    output: str | None = None,
    output_node: bool = False,
    version: int = 1,
    fingerprint: Callable[[Mapping[str, Any]], str | None] | None = None,
    display_name: str = "",
    registry: Registry | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `func` as node type `name`.

    `output` names a single output (default: the socket type in lower case).
    `version` enters the cache signature: bump it when the node's behaviour changes.
    `fingerprint(inputs)` returns a string for nodes that read files (path, size, mtime),
    so an edited file on disk invalidates the cache although the literal inputs did not change.
    """

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        definition = build_definition(func, name, category, output, output_node, version,
                                      fingerprint, display_name)
        (REGISTRY if registry is None else registry).add(definition)
        func.__node__ = definition  # type: ignore[attr-defined]
        return func

    return wrap
