"""Socket types: the names on the wires, their colours, and which types a socket accepts.

The engine knows only the primitives (INT, FLOAT, STRING, BOOLEAN), because widgets edit
them. Every other type is registered by the node library that defines its values, so the
engine stays free of any domain. A value class names its type with `__socket__`; the
`socket_type` class decorator sets that and registers the type in one step. The canvas
takes colours and link compatibility from the registered types, so the front end never
keeps its own copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from graph_runtime.registry import Registry

T = TypeVar("T", bound=type)
DEFAULT_COLOR = "#9aa4b2"


@dataclass(frozen=True)
class SocketType:
    """A socket type. `accepts` lists the other types an input of this type may be linked
    from (a wired INT may feed a FLOAT input); nothing else converts implicitly."""

    name: str
    color: str = DEFAULT_COLOR
    accepts: frozenset[str] = field(default_factory=frozenset)
    description: str = ""

    def takes(self, produced: str) -> bool:
        return produced == self.name or produced in self.accepts

    def schema(self) -> dict[str, Any]:
        return {"name": self.name, "color": self.color,
                "accepts": [self.name, *sorted(self.accepts)],
                "description": self.description}


PRIMITIVE_TYPES: tuple[SocketType, ...] = (
    SocketType("INT", "#8fd3a8", description="an integer"),
    SocketType("FLOAT", "#b5d98a", frozenset({"INT"}), "a floating point number"),
    SocketType("STRING", "#c5cbd6", description="text"),
    SocketType("BOOLEAN", "#e57373", description="true or false"),
)
# Python types that annotate primitive sockets.
PRIMITIVES: dict[type, str] = {int: "INT", float: "FLOAT", str: "STRING", bool: "BOOLEAN"}


def socket_type(name: str, *, color: str = DEFAULT_COLOR, accepts: Iterable[str] = (),
                description: str = "", registry: Registry | None = None
                ) -> Callable[[T], T]:
    """Class decorator: the class is the value of socket type `name`, registered in
    `registry` (the process-wide one by default). The docstring's first line describes the
    type unless `description` is given."""

    def wrap(cls: T) -> T:
        from graph_runtime.registry import REGISTRY

        doc = description or (cls.__doc__ or "").strip().split("\n", 1)[0]
        target = REGISTRY if registry is None else registry
        target.add_socket_type(SocketType(name, color, frozenset(accepts), doc))
        cls.__socket__ = name  # type: ignore[attr-defined]
        return cls

    return wrap
