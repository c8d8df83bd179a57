"""A tiny node library for the command-line tests (loaded with --nodes)."""

from __future__ import annotations

from typing import Annotated

from graph_runtime import Int, node
from graph_runtime.context import current


@node("TConst", output="value")
def t_const(value: Annotated[int, Int(min=0, max=100)] = 1) -> int:
    return value


@node("TFail", output="value")
def t_fail(x: int) -> int:
    raise RuntimeError(f"cannot handle {x}")


@node("TSteps", output="value")
def t_steps(x: int, total: Annotated[int, Int(min=1)] = 3) -> int:
    ctx = current()
    assert ctx is not None
    for i in range(1, total + 1):
        ctx.progress(i, total, preview=object())  # a stand-in for a preview image
    return x


@node("TShow", output_node=True)
def t_show(value: int) -> None:
    ctx = current()
    assert ctx is not None
    ctx.ui["value"] = [value]
