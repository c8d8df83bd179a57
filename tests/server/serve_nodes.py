"""Two nodes registered into the global registry, for running `noodle serve` in a subprocess
without importing the diffusion library (which loads torch)."""

from __future__ import annotations

from typing import Annotated

from graph_runtime import Text, node
from graph_runtime.context import current


@node("Greeting", category="test", output="text")
def greeting(name: Annotated[str, Text()] = "world") -> str:
    """Hello, name."""
    return f"hello {name}"


@node("WriteText", category="test", output_node=True)
def write_text(text: str, filename: Annotated[str, Text()] = "out.txt") -> None:
    """Write the text into the output folder."""
    ctx = current()
    assert ctx is not None
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.output_dir / filename
    path.write_text(text)
    ctx.add_file(path)
