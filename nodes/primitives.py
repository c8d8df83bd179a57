"""Primitive nodes: constants, arithmetic, text, and outputs that show or save a value.

They need no torch, so they also serve to try the engine (and its cache) on their own.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from graph_runtime import Bool, Choice, Float, Int, Text, current, folders, node
from nodes.files import NumberedFiles

CATEGORY = "primitives"
_INT_OPS = ["add", "subtract", "multiply", "floor_divide", "modulo", "min", "max", "power"]
_FLOAT_OPS = ["add", "subtract", "multiply", "divide", "min", "max", "power"]
# Widget types of these nodes; integers stay within what a JavaScript number holds exactly.
AnyInt = Annotated[int, Int(min=-(2**53 - 1), max=2**53 - 1)]
AnyFloat = Annotated[float, Float()]
OneLine = Annotated[str, Text()]


@node("IntConstant", category=CATEGORY, output="value", display_name="Integer")
def int_constant(value: Annotated[int, Int(min=-(2**53 - 1), max=2**53 - 1)] = 0) -> int:
    """An integer, to wire into several inputs at once."""
    return value


@node("FloatConstant", category=CATEGORY, output="value", display_name="Float")
def float_constant(value: AnyFloat = 0.0) -> float:
    """A floating point number, to wire into several inputs at once."""
    return value


@node("StringConstant", category=CATEGORY, output="value", display_name="String")
def string_constant(value: Annotated[str, Text(multiline=True)] = "") -> str:
    """A piece of text, e.g. one prompt shared by several encoders."""
    return value


@node("BooleanConstant", category=CATEGORY, output="value", display_name="Boolean")
def boolean_constant(value: Annotated[bool, Bool()] = False) -> bool:
    """True or false."""
    return value


# Python integers grow without bound, and a huge power runs for minutes holding the GIL
# (freezing the server), so results are limited to this many bits.
MAX_INT_BITS = 1024


@node("IntMath", category=CATEGORY, output="value", display_name="Integer math")
def int_math(a: AnyInt = 0, b: AnyInt = 0,
             operation: Annotated[str, Choice(_INT_OPS)] = "add") -> int:
    """`a (operation) b` on integers. Division by zero is an error, not a silent 0; a result
    over 1024 bits is an error too, found before any long computation starts."""
    if operation in ("floor_divide", "modulo") and b == 0:
        raise ZeroDivisionError(f"IntMath: {operation} by zero")
    if operation == "power":
        if b < 0:
            raise ValueError("IntMath: a negative power is not an integer")
        if abs(a) > 1 and b * math.log2(abs(a)) > MAX_INT_BITS:
            raise ValueError(f"IntMath: input 'b': {a} ** {b} would have more than "
                             f"{MAX_INT_BITS} bits")
    ops = {"add": lambda: a + b, "subtract": lambda: a - b, "multiply": lambda: a * b,
           "min": lambda: min(a, b), "max": lambda: max(a, b), "floor_divide": lambda: a // b,
           "modulo": lambda: a % b, "power": lambda: a ** b}
    result = ops[operation]()
    if result.bit_length() > MAX_INT_BITS:
        raise ValueError(f"IntMath: the result of {operation} has more than {MAX_INT_BITS} "
                         "bits")
    return result


@node("FloatMath", category=CATEGORY, output="value", display_name="Float math")
def float_math(a: AnyFloat = 0.0, b: AnyFloat = 0.0,
               operation: Annotated[str, Choice(_FLOAT_OPS)] = "add") -> float:
    """`a (operation) b` on floats (integers may be wired in). A result too large for a
    float is an error, not an infinity that no JSON reader accepts."""
    if operation == "divide":
        if b == 0:
            raise ZeroDivisionError("FloatMath: division by zero")
        result = a / b
    elif operation == "power":
        result = math.pow(a, b)
    else:
        result = {"add": a + b, "subtract": a - b, "multiply": a * b, "min": min(a, b),
                  "max": max(a, b)}[operation]
    if not math.isfinite(result):
        raise OverflowError(f"FloatMath: {a!r} {operation} {b!r} is too large for a float")
    return result


@node("TextJoin", category=CATEGORY, output="text", display_name="Join text")
def text_join(a: OneLine = "", b: OneLine = "", separator: OneLine = ", ") -> str:
    """`a`, the separator, then `b`; an empty side is skipped with its separator, so
    optional prompt fragments join cleanly."""
    return separator.join(part for part in (a, b) if part)


@node("NumberToText", category=CATEGORY, output="text", display_name="Number to text")
def number_to_text(value: AnyFloat = 0.0,
                   decimals: Annotated[int, Int(min=-1, max=12)] = -1) -> str:
    """Format a number; decimals -1 prints it as short as it reads back exactly
    (an integral value prints without a fraction)."""
    if decimals >= 0:
        return f"{value:.{decimals}f}"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@node("ShowText", category=CATEGORY, output_node=True, display_name="Show text")
def show_text(text: str) -> None:
    """Show a text on the canvas (and in a headless run's result)."""
    ctx = current()
    if ctx is not None:
        ctx.ui.setdefault("text", []).append(text)


@node("ShowNumber", category=CATEGORY, output_node=True, display_name="Show number")
def show_number(value: float) -> None:
    """Show a number on the canvas (and in a headless run's result)."""
    ctx = current()
    if ctx is not None:
        shown = int(value) if float(value).is_integer() else value
        ctx.ui.setdefault("value", []).append(shown)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@node("SaveText", category=CATEGORY, output_node=True, display_name="Save text")
def save_text(text: str, filename_prefix: OneLine = "noodle") -> None:
    """Write the text to `<output>/<prefix>_00001.txt`, numbering past existing files."""
    ctx = current()
    prefix = _UNSAFE.sub("_", filename_prefix).strip("._") or "noodle"
    files = NumberedFiles(folders().output, prefix, ".txt")
    path = files.write(lambda fh: fh.write(text.encode("utf-8")))
    if ctx is not None:
        ctx.add_file(path)
        ctx.ui.setdefault("text", []).append(text)
