"""Widget specs: how a literal input is edited in place, its default, and its bounds.

Each widget checks a value and returns a validation code and message instead of raising,
so validation can collect every problem of a workflow at once. They live apart from the
decorator (`graph_runtime.nodes` re-exports them) to keep each module about one thing.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Widget:
    """Base of the widget specs: a default value plus how the canvas edits it."""

    default: Any
    tooltip: str = ""
    kind: typing.ClassVar[str] = ""
    socket: typing.ClassVar[str] = ""

    def spec(self) -> dict[str, Any]:
        """The JSON the front end renders the widget from."""
        out = {"widget": self.kind, "default": self.default}
        for key, value in self.__dict__.items():
            if key not in ("default",) and value not in (None, "", ()):
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def check(self, value: Any) -> tuple[str, str] | None:
        """Return `(code, message)` if `value` is not acceptable, else None."""
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range_error(value: float, low: float | None, high: float | None) -> tuple[str, str] | None:
    """The bounds check Int and Float share."""
    if low is not None and value < low:
        return "value_out_of_range", f"{value} is below the minimum {low}"
    if high is not None and value > high:
        return "value_out_of_range", f"{value} is above the maximum {high}"
    return None


@dataclass(frozen=True)
class Int(Widget):
    default: int = 0
    min: int | None = None
    max: int | None = None
    step: int = 1
    tooltip: str = ""
    kind: typing.ClassVar[str] = "int"
    socket: typing.ClassVar[str] = "INT"

    def check(self, value: Any) -> tuple[str, str] | None:
        if not (_is_number(value) and float(value).is_integer()):
            return "invalid_value_type", f"expected an integer, got {value!r}"
        return _range_error(value, self.min, self.max)


@dataclass(frozen=True)
class Seed(Int):
    """An integer seed; the canvas offers "randomize after run" (control_after_generate).

    The maximum is 2**53 - 1 so the value survives a round trip through JavaScript numbers.
    """

    default: int = 0
    min: int | None = 0
    max: int | None = 2**53 - 1
    control_after_run: str = "fixed"
    tooltip: str = ""
    kind: typing.ClassVar[str] = "seed"


@dataclass(frozen=True)
class Float(Widget):
    default: float = 0.0
    min: float | None = None
    max: float | None = None
    step: float = 0.01
    tooltip: str = ""
    kind: typing.ClassVar[str] = "float"
    socket: typing.ClassVar[str] = "FLOAT"

    def check(self, value: Any) -> tuple[str, str] | None:
        if not _is_number(value):
            return "invalid_value_type", f"expected a number, got {value!r}"
        return _range_error(value, self.min, self.max)


@dataclass(frozen=True)
class Text(Widget):
    default: str = ""
    multiline: bool = False
    tooltip: str = ""
    kind: typing.ClassVar[str] = "text"
    socket: typing.ClassVar[str] = "STRING"

    def check(self, value: Any) -> tuple[str, str] | None:
        if not isinstance(value, str):
            return "invalid_value_type", f"expected text, got {value!r}"
        return None


@dataclass(frozen=True, init=False)
class Choice(Widget):
    """One of a fixed list of strings. `options` may be a callable, for lists that change
    at run time (e.g. the models folder); it is re-read each time the schema is exported."""

    default: str = ""
    tooltip: str = ""
    options: tuple[str, ...] | Callable[[], list[str]] = ()
    allow_other: bool = False
    kind: typing.ClassVar[str] = "choice"
    socket: typing.ClassVar[str] = "STRING"

    def __init__(self, options: typing.Sequence[str] | Callable[[], list[str]],
                 default: str | None = None, tooltip: str = "",
                 allow_other: bool = False) -> None:
        opts = options if callable(options) else tuple(options)
        if default is None:
            default = "" if callable(opts) or not opts else opts[0]
        object.__setattr__(self, "options", opts)
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "tooltip", tooltip)
        object.__setattr__(self, "allow_other", allow_other)

    def current_options(self) -> list[str]:
        return list(self.options()) if callable(self.options) else list(self.options)

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"widget": self.kind, "default": self.default,
                               "options": self.current_options()}
        if self.tooltip:
            out["tooltip"] = self.tooltip
        if self.allow_other:
            out["allow_other"] = True
        return out

    def check(self, value: Any) -> tuple[str, str] | None:
        if not isinstance(value, str):
            return "invalid_value_type", f"expected one of the choices, got {value!r}"
        if not self.allow_other and value not in self.current_options():
            shown = ", ".join(self.current_options()[:20])
            return "invalid_choice", f"{value!r} is not one of: {shown}"
        return None


@dataclass(frozen=True)
class Bool(Widget):
    default: bool = False
    tooltip: str = ""
    kind: typing.ClassVar[str] = "bool"
    socket: typing.ClassVar[str] = "BOOLEAN"

    def check(self, value: Any) -> tuple[str, str] | None:
        if not isinstance(value, bool):
            return "invalid_value_type", f"expected true or false, got {value!r}"
        return None
