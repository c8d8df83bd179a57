"""Widget specs: how a literal input is edited in place, and which values it accepts.

A widget rides in the parameter's annotation, the way FastAPI and Hamilton carry metadata:
`steps: Annotated[int, Int(min=1, max=1000)] = 20`. The default stays the parameter's own
default, so a node remains an ordinary function that can be called with its real defaults.

Each widget checks a value and returns a validation code and message instead of raising,
so validation can collect every problem of a workflow at once.
"""

from __future__ import annotations

import math
import reprlib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from graph_runtime.settings import Folders

Problem = tuple[str, str]


@dataclass(frozen=True, kw_only=True)
class Widget:
    """Base of the widget specs: how the canvas edits a literal input."""

    tooltip: str = ""
    kind: typing.ClassVar[str] = ""
    socket: typing.ClassVar[str] = ""

    def spec(self, folders: Folders | None = None) -> dict[str, Any]:
        """The JSON the front end renders the widget from (the default is added by the
        input, which owns it)."""
        out: dict[str, Any] = {"widget": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if value not in (None, "", ()):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def check(self, value: Any, folders: Folders | None = None) -> Problem | None:
        """Return `(code, message)` if `value` is not acceptable, else None."""
        return None


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, 60, 60, 60
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = 6


def shown(value: Any) -> str:
    """`repr(value)`, shortened: an error message quotes the value, and the value may be a
    megabyte of text, a number of a thousand digits or lists nested hundreds deep."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return _SHORT.repr(value)


def is_finite_number(value: Any) -> bool:
    """A finite int or float (not a bool: JSON true is not 1). NaN and infinities never
    reach a node: they compare false with every bound and break JSON for the browser."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def is_float_value(value: Any) -> bool:
    """A finite number that is also a float: an int past 1.8e308 would overflow `float()`."""
    if not is_finite_number(value):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _range_error(value: float, low: float | None, high: float | None) -> Problem | None:
    """The bounds check Int and Float share."""
    if low is not None and value < low:
        return "value_out_of_range", f"{shown(value)} is below the minimum {low}"
    if high is not None and value > high:
        return "value_out_of_range", f"{shown(value)} is above the maximum {high}"
    return None


@dataclass(frozen=True, kw_only=True)
class Int(Widget):
    min: int | None = None
    max: int | None = None
    step: int = 1
    kind: typing.ClassVar[str] = "int"
    socket: typing.ClassVar[str] = "INT"

    def check(self, value: Any, folders: Folders | None = None) -> Problem | None:
        # A float such as 64.0 is refused rather than passed on: nodes index and loop with
        # integers. Ints are compared as they are (float() of 10**400 would overflow).
        if not is_finite_number(value) or not isinstance(value, int):
            return "invalid_value_type", f"expected an integer, got {shown(value)}"
        return _range_error(value, self.min, self.max)


@dataclass(frozen=True, kw_only=True)
class Seed(Int):
    """An integer seed; the canvas offers "randomize after run" (control_after_generate).

    The maximum is 2**53 - 1 so the value survives a round trip through JavaScript numbers.
    """

    min: int | None = 0
    max: int | None = 2**53 - 1
    control_after_run: str = "fixed"
    kind: typing.ClassVar[str] = "seed"


@dataclass(frozen=True, kw_only=True)
class Float(Widget):
    min: float | None = None
    max: float | None = None
    step: float = 0.01
    kind: typing.ClassVar[str] = "float"
    socket: typing.ClassVar[str] = "FLOAT"

    def check(self, value: Any, folders: Folders | None = None) -> Problem | None:
        if not is_float_value(value):
            return "invalid_value_type", f"expected a finite number, got {shown(value)}"
        return _range_error(value, self.min, self.max)


# Far more than any prompt, and still text a node handles in a moment (tokenizing 100,000
# characters takes a quarter of a second; the 8 MiB a request may carry, twenty seconds).
MAX_TEXT_LENGTH = 100_000


@dataclass(frozen=True, kw_only=True)
class Text(Widget):
    multiline: bool = False
    max_length: int = MAX_TEXT_LENGTH
    kind: typing.ClassVar[str] = "text"
    socket: typing.ClassVar[str] = "STRING"

    def check(self, value: Any, folders: Folders | None = None) -> Problem | None:
        if not isinstance(value, str):
            return "invalid_value_type", f"expected text, got {shown(value)}"
        if len(value) > self.max_length:
            return "value_too_long", (f"{len(value):,} characters; at most "
                                      f"{self.max_length:,}")
        return None


Options = Sequence[str] | Callable[[Folders], Sequence[str]]


@dataclass(frozen=True, init=False)
class Choice(Widget):
    """One of a list of strings.

    `options` may be a function of the run's `Folders`, for lists that come from a folder
    (model files, uploaded images); it is re-read each time the schema is exported, with
    the folders of the server or run that asks. `allow_other` accepts values outside the
    list (a path typed by hand). `upload` names what the canvas may upload into the input
    folder for this widget (today "image"), so the front end needs no list of such nodes.
    """

    options: tuple[str, ...] | Callable[[Folders], Sequence[str]] = ()
    allow_other: bool = False
    upload: str = ""
    kind: typing.ClassVar[str] = "choice"
    socket: typing.ClassVar[str] = "STRING"

    def __init__(self, options: Options, *, allow_other: bool = False, upload: str = "",
                 tooltip: str = "") -> None:
        object.__setattr__(self, "options", options if callable(options) else tuple(options))
        object.__setattr__(self, "allow_other", allow_other)
        object.__setattr__(self, "upload", upload)
        object.__setattr__(self, "tooltip", tooltip)

    def current_options(self, folders: Folders | None = None) -> list[str]:
        if callable(self.options):
            return list(self.options(folders if folders is not None else Folders.from_env()))
        return list(self.options)

    def spec(self, folders: Folders | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"widget": self.kind, "options": self.current_options(folders)}
        if self.tooltip:
            out["tooltip"] = self.tooltip
        if self.allow_other:
            out["allow_other"] = True
        if self.upload:
            out["upload"] = self.upload
        return out

    def check(self, value: Any, folders: Folders | None = None) -> Problem | None:
        if not isinstance(value, str):
            return "invalid_value_type", f"expected one of the choices, got {shown(value)}"
        if self.allow_other:
            return None
        options = self.current_options(folders)
        if value not in options:
            return "invalid_choice", f"{shown(value)} is not one of: {', '.join(options[:20])}"
        return None


@dataclass(frozen=True, kw_only=True)
class Bool(Widget):
    kind: typing.ClassVar[str] = "bool"
    socket: typing.ClassVar[str] = "BOOLEAN"

    def check(self, value: Any, folders: Folders | None = None) -> Problem | None:
        if not isinstance(value, bool):
            return "invalid_value_type", f"expected true or false, got {shown(value)}"
        return None
