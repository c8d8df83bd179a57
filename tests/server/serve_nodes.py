"""Two nodes registered into the global registry, for running `noodle serve` in a subprocess
without importing the diffusion library (which loads torch)."""

from __future__ import annotations

from graph_runtime.context import current
from graph_runtime.nodes import node
from graph_runtime.widgets import Text


@node("Greeting", category="test", output="text")
def greeting(name: str = Text("world")) -> str:
    """Hello, name."""
    return f"hello {name}"


@node("WriteText", category="test", output_node=True)
def write_text(text: str, filename: str = Text("out.txt")) -> None:
    """Write the text into the output folder."""
    ctx = current()
    assert ctx is not None
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.output_dir / filename
    path.write_text(text)
    ctx.add_file(path)
